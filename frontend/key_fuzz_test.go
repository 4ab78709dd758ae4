package frontend

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/memcache/memcache/keyindex"
)

// FuzzValidateKey: ValidateKey accepts exactly the keys of 1..MaxKeyBytes
// bytes of UTF-8 without control characters, refusing the others with
// ErrBadKey; every key it accepts is stored by the key index byte for byte
// and comes back out of it; and every URL the frontend builds for a key
// (the image path, also as a browser resolves it against a page, and the
// retrieve query) names that key again when the handlers read it back.
// go test -run '^$' -fuzz '^FuzzValidateKey$' ./frontend.
func FuzzValidateKey(f *testing.F) {
	for _, k := range []string{"plain", "a/b/c.png", "../../etc/passwd", ".", "..", "with space", "猫 ☕", `'; DROP TABLE images; --`,
		"100%", "?q=1#x", "%2F", "a%zz", "", "bad\x00key", "bad\nkey", "bad\xffkey", "\u2028", "\u0085", "\ufeff", "\U0010ffff",
		strings.Repeat("k", MaxKeyBytes), strings.Repeat("k", MaxKeyBytes+1), strings.Repeat("猫", 84)} {
		f.Add(k)
	}
	st := newStoresB(f)
	fe := New(Config{}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	h := fe.Handler()
	base, _ := url.Parse("http://frontend.test/keys")
	f.Fuzz(func(t *testing.T, key string) {
		err := ValidateKey(key)
		want := key != "" && len(key) <= MaxKeyBytes && utf8.ValidString(key) && strings.IndexFunc(key, unicode.IsControl) < 0
		switch {
		case want && err != nil:
			t.Fatalf("ValidateKey(%q) = %v, want it accepted", key, err)
		case !want && err == nil:
			t.Fatalf("ValidateKey(%q) accepted it, want it refused", key)
		case err != nil && !errors.Is(err, ErrBadKey):
			t.Fatalf("ValidateKey(%q) = %v, want ErrBadKey", key, err)
		}
		if err != nil {
			// The key is not stored by the frontend; the index never finds it.
			if _, err := st.index.Get(context.Background(), key); !errors.Is(err, keyindex.ErrNotFound) {
				t.Fatalf("index Get(%q) of a refused key: got %v, want ErrNotFound", key, err)
			}
			return
		}

		// Whatever the frontend accepts, the key index stores as it is.
		ctx := context.Background()
		if _, _, err := st.index.Put(ctx, keyindex.Entry{Key: key, Object: "img/fuzz", ContentType: "image/png", Size: 1}); err != nil {
			t.Fatalf("index Put(%q) of a key ValidateKey accepts: %v", key, err)
		}
		e, err := st.index.Get(ctx, key)
		if err != nil || e.Key != key {
			t.Fatalf("index Get(%q): got %q, %v, want the key back", key, e.Key, err)
		}
		if _, err := st.index.Delete(ctx, key); err != nil {
			t.Fatalf("index Delete(%q): %v", key, err)
		}

		// The image URL names the key, as sent and as a browser resolves
		// it on a page; the tester's path and the retrieve query too.
		img, err := url.Parse(imageURL(key))
		if err != nil {
			t.Fatalf("imageURL(%q) = %q does not parse: %v", key, imageURL(key), err)
		}
		for _, u := range []*url.URL{img, base.ResolveReference(img)} {
			r := httptest.NewRequest(http.MethodGet, u.RequestURI(), nil)
			if got, err := pathKey(r, "/images/"); err != nil || got != key {
				t.Fatalf("image URL %q of key %q: read back %q, %v", u.RequestURI(), key, got, err)
			}
		}
		r := httptest.NewRequest(http.MethodPost, "/api/key/"+url.PathEscape(key), nil)
		if got, err := pathKey(r, "/api/key/"); err != nil || got != key {
			t.Fatalf("tester path of key %q: read back %q, %v", key, got, err)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusNotFound {
			t.Fatalf("POST %s of a valid key that is not stored: got %d %s, want 404", r.URL, w.Code, w.Body)
		}
		q, err := url.Parse(retrieveURL(key))
		if err != nil || q.Query().Get("key") != key {
			t.Fatalf("retrieveURL(%q) = %q: reads back %q, %v", key, retrieveURL(key), q.Query().Get("key"), err)
		}
	})
}
