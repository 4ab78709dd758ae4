package frontend

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Bits of FuzzUpload's mode: how the multipart body departs from a
// well-formed upload.
const (
	upNoKey         = 1 << iota // no key part
	upNoFile                    // no file part
	upFileFirst                 // the file part before the key part
	upTwoKeys                   // a second key part after the first
	upNoClose                   // no closing delimiter
	upTail                      // tail after the closing delimiter
	upOtherBoundary             // the Content-Type names another boundary
	upPage                      // POST /upload (the page) instead of /api/upload
)

// multipartBody builds an upload body by hand (not with multipart.Writer,
// which refuses what a client may send anyway).
func multipartBody(boundary, key, filename, partType string, content []byte, mode uint8, tail []byte) []byte {
	var b bytes.Buffer
	keyPart := func(k string) {
		fmt.Fprintf(&b, "--%s\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\n%s\r\n", boundary, k)
	}
	filePart := func() {
		esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(filename)
		fmt.Fprintf(&b, "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n", boundary, esc)
		if partType != "" {
			fmt.Fprintf(&b, "Content-Type: %s\r\n", partType)
		}
		b.WriteString("\r\n")
		b.Write(content)
		b.WriteString("\r\n")
	}
	if mode&upFileFirst != 0 && mode&upNoFile == 0 {
		filePart()
	}
	if mode&upNoKey == 0 {
		keyPart(key)
		if mode&upTwoKeys != 0 {
			keyPart(key + "2")
		}
	}
	if mode&upFileFirst == 0 && mode&upNoFile == 0 {
		filePart()
	}
	if mode&upNoClose == 0 {
		fmt.Fprintf(&b, "--%s--\r\n", boundary)
	}
	if mode&upTail != 0 {
		b.Write(tail)
	}
	return b.Bytes()
}

// expectUpload is what a frontend must make of an upload request: the
// form read from the request by the standard library's multipart reader
// (a second, independent reading of the body), then the frontend's rules.
// It returns the status class wanted (200, 400 or 413), and for 200 the
// key and the file's bytes.
func expectUpload(ctype string, body []byte) (int, string, []byte) {
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil || mt != "multipart/form-data" {
		return 400, "", nil
	}
	limit := int64(fuzzMaxUpload + 64<<10)
	if int64(len(body)) > limit {
		return 413, "", nil
	}
	form, err := multipart.NewReader(bytes.NewReader(body), params["boundary"]).ReadForm(limit)
	if err != nil {
		return 400, "", nil
	}
	defer form.RemoveAll()
	var key string
	if v := form.Value["key"]; len(v) > 0 {
		key = v[0]
	}
	if ValidateKey(key) != nil {
		return 400, "", nil
	}
	fhs := form.File["file"]
	if len(fhs) == 0 {
		return 400, "", nil
	}
	if fhs[0].Size > fuzzMaxUpload {
		return 413, "", nil
	}
	fl, err := fhs[0].Open()
	if err != nil {
		return 400, "", nil
	}
	defer fl.Close()
	data, _ := io.ReadAll(fl)
	if len(data) == 0 || !strings.HasPrefix(http.DetectContentType(data), "image/") {
		return 400, "", nil
	}
	return 200, key, data
}

// FuzzUpload posts fuzzed multipart uploads (boundary, key, file name,
// part type, file bytes, and a mode that drops, reorders, doubles or cuts
// parts) to the tester API and the upload page of a frontend over the
// real stores. It never panics and never answers 5xx; it answers what
// the form, read independently, calls for: 2xx with the file stored
// byte for byte under the key (and nothing else changed), or 400/413 with
// nothing stored. A well-formed body with a boundary that occurs nowhere
// else stores exactly the bytes that were put in it.
// go test -run '^$' -fuzz '^FuzzUpload$' ./frontend.
func FuzzUpload(f *testing.F) {
	png, err := os.ReadFile(filepath.Join("testdata", "red.png"))
	if err != nil {
		f.Fatal(err)
	}
	gif := []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;")
	f.Add("xyz", "k", "photo.png", "image/png", png, uint8(0), []byte(nil))
	f.Add("xyz", "keep", "photo.png", "", png, uint8(upPage), []byte(nil))
	f.Add("b0undary", "猫/☕ ../x", `we"ird\name.gif`, "application/octet-stream", gif, uint8(upFileFirst|upTwoKeys), []byte(nil))
	f.Add("xyz", "k", "a.gif", "", append(gif, "\r\n--xyz\r\n"...), uint8(0), []byte(nil))
	f.Add("xyz", "k", "a.gif", "", gif, uint8(upNoClose), []byte(nil))
	f.Add("xyz", "k", "a.gif", "", gif, uint8(upTail), []byte("--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\nGIF87a\r\n--xyz--"))
	f.Add("xyz", "k", "a.gif", "", gif, uint8(upOtherBoundary), []byte(nil))
	f.Add("xyz", "", "a.gif", "", gif, uint8(upNoKey), []byte(nil))
	f.Add("xyz", "k", "a.gif", "", gif, uint8(upNoFile), []byte(nil))
	f.Add("xyz", "k", "", "", gif, uint8(0), []byte(nil))
	f.Add("xyz", "k", "a.txt", "text/plain", []byte("hello, I am not an image"), uint8(0), []byte(nil))
	f.Add("xyz", "k", "big.gif", "", append(gif, make([]byte, fuzzMaxUpload)...), uint8(0), []byte(nil))
	f.Add("xyz", strings.Repeat("k", 251), "a.gif", "", gif, uint8(upPage), []byte(nil))
	f.Add("xyz", "bad\x00key", "a.gif", "", gif, uint8(0), []byte(nil))
	f.Add("", "k", "a.gif", "", gif, uint8(0), []byte(nil))
	f.Add("x y\"z", "k", "a\r\nX: y", "", gif, uint8(0), []byte(nil))
	ff := newFuzzFrontend(f)
	f.Fuzz(func(t *testing.T, boundary, key, filename, partType string, content []byte, mode uint8, tail []byte) {
		body := multipartBody(boundary, key, filename, partType, content, mode, tail)
		named := boundary
		if mode&upOtherBoundary != 0 {
			named += "x"
		}
		ctype := mime.FormatMediaType("multipart/form-data", map[string]string{"boundary": named})
		if ctype == "" {
			ctype = "multipart/form-data; boundary=" + named
		}
		path := "/api/upload"
		if mode&upPage != 0 {
			path = "/upload"
		}
		r, ok := httpRequest(http.MethodPost, path, [][2]string{{"Content-Type", ctype}}, body)
		if !ok {
			return
		}
		wantCode, wantKey, wantData := expectUpload(r.Header.Get("Content-Type"), body)
		// A body whose parts are what they seem must give back what was put in.
		clean := mode&(upNoKey|upNoFile|upNoClose|upOtherBoundary|upTwoKeys) == 0 && boundary != "" &&
			!bytes.Contains(body[len(boundary)+2:], []byte(boundary)) && !strings.ContainsAny(key+filename+partType, "\r\n") &&
			mime.FormatMediaType("multipart/form-data", map[string]string{"boundary": boundary}) != "" && len(boundary) <= 70
		if clean && wantCode == 200 && (wantKey != key || !bytes.Equal(wantData, content)) {
			t.Fatalf("the body with boundary %q reads back as key %q and %d bytes, want key %q and the %d bytes put in", boundary, wantKey, len(wantData), key, len(content))
		}

		before := ff.state(t)
		w := httptest.NewRecorder()
		ff.h.ServeHTTP(w, r)
		after := ff.state(t)
		code, out := w.Code, w.Body.Bytes()
		what := fmt.Sprintf("POST %s (mode %08b, %d bytes)", path, mode, len(body))
		if !reflect.DeepEqual(before, after) {
			defer ff.reset(t)
		}
		if code >= 500 {
			t.Fatalf("%s: got %d %s, want no 5xx", what, code, out)
		}
		if code != wantCode {
			t.Fatalf("%s: got %d %.300s, want %d", what, code, out, wantCode)
		}
		if code >= 400 {
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("%s: answered %d but changed the stores:\nbefore %+v\nafter  %+v", what, code, before, after)
			}
			if path == "/api/upload" {
				testerError(t, what, code, out)
			}
			return
		}
		if path == "/api/upload" {
			var ans struct{ Success, Key string }
			if err := json.Unmarshal(out, &ans); err != nil || ans.Success != "true" || ans.Key != wantKey {
				t.Fatalf("%s: got %q, want success and the key %q", what, out, wantKey)
			}
		}
		got, e, ok := ff.blob(t, wantKey)
		if !ok || !bytes.Equal(got, wantData) || e.Size != int64(len(wantData)) || e.ContentType != http.DetectContentType(wantData) {
			t.Fatalf("%s: key %q holds %d bytes (row %+v, %v), want the %d bytes uploaded", what, wantKey, len(got), e, ok, len(wantData))
		}
		// Nothing else changed: the other rows are as they were, and one
		// object (the new one) replaced the key's old one, if any.
		var others []string
		for _, row := range after.Rows {
			if row.Key != wantKey {
				others = append(others, row.Key)
			}
		}
		var was []string
		for _, row := range before.Rows {
			if row.Key != wantKey {
				was = append(was, row.Key)
			}
		}
		if !reflect.DeepEqual(others, was) {
			t.Fatalf("%s: the other keys went from %q to %q", what, was, others)
		}
		if len(after.Objects) != len(after.Rows) {
			t.Fatalf("%s: %d objects for %d rows, want one each", what, len(after.Objects), len(after.Rows))
		}
	})
}
