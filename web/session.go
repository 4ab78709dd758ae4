package web

// Design note: sessions and CSRF.
//
// The UI keeps no server-side session store, so that any replica can serve
// any request (and a follower can forward a form to the leader). A session
// is a cookie whose value is signed with a key derived from the admin
// token and the cluster secret, which every replica shares:
//
//	base64url("v1|<expiry unix>|<session id>|<1 if logged in, else 0>") "." base64url(HMAC-SHA256(key, payload))
//
// A browser gets an anonymous session (logged in = 0) on the login page, so
// the login form carries a CSRF token too, and a fresh logged-in session on a
// correct token (a new id: no session fixation). Every form carries a hidden
// field csrf = HMAC-SHA256(key, "csrf:"+session id), checked on every POST.
// Logging out deletes the cookie in the browser; a copied cookie stays valid
// until it expires (sessionTTL), the price of having no store.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/memcache/memcache/pki"
)

const (
	sessionCookie = "memcache_session"
	sessionTTL    = 12 * time.Hour
	csrfField     = "csrf"
)

// session is a verified session cookie.
type session struct {
	id       string
	expiry   time.Time
	loggedIn bool
}

type sessionKey struct{}

// sessionFrom returns the session that requireSession attached to ctx.
func sessionFrom(ctx context.Context) session {
	s, _ := ctx.Value(sessionKey{}).(session)
	return s
}

// deriveKey returns the key that signs sessions and CSRF tokens: the same on
// every replica that shares the admin token and the cluster secret.
func deriveKey(adminToken, secret string) []byte {
	mac := hmac.New(sha256.New, []byte(adminToken))
	mac.Write([]byte("memcache manager UI session key v1\x00" + secret))
	return mac.Sum(nil)
}

func (a *API) sign(msg string) []byte {
	mac := hmac.New(sha256.New, a.key)
	mac.Write([]byte(msg))
	return mac.Sum(nil)
}

// newSession returns a session with a fresh random id.
func newSession(loggedIn bool, now time.Time) session {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand)
	return session{id: hex.EncodeToString(b), expiry: now.Add(sessionTTL).Truncate(time.Second), loggedIn: loggedIn}
}

func (a *API) encodeSession(s session) string {
	flag := "0"
	if s.loggedIn {
		flag = "1"
	}
	payload := fmt.Sprintf("v1|%d|%s|%s", s.expiry.Unix(), s.id, flag)
	return base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." +
		base64.RawURLEncoding.EncodeToString(a.sign("session:"+payload))
}

// decodeSession verifies a cookie value; ok is false for anything forged,
// malformed or expired.
func (a *API) decodeSession(v string, now time.Time) (session, bool) {
	p64, m64, found := strings.Cut(v, ".")
	if !found {
		return session{}, false
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p64)
	mac, err2 := base64.RawURLEncoding.DecodeString(m64)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, a.sign("session:"+string(payload))) {
		return session{}, false
	}
	f := strings.Split(string(payload), "|")
	if len(f) != 4 || f[0] != "v1" || f[2] == "" || (f[3] != "0" && f[3] != "1") {
		return session{}, false
	}
	exp, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || !now.Before(time.Unix(exp, 0)) {
		return session{}, false
	}
	return session{id: f[2], expiry: time.Unix(exp, 0), loggedIn: f[3] == "1"}, true
}

// readSession returns the request's valid session, if it has one.
func (a *API) readSession(r *http.Request) (session, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return session{}, false
	}
	return a.decodeSession(c.Value, time.Now())
}

func (a *API) setSession(w http.ResponseWriter, r *http.Request, s session) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: a.encodeSession(s), Path: "/ui", Expires: s.expiry,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: a.secure(r),
	})
}

func (a *API) clearSession(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: "", Path: "/ui", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: a.secure(r),
	})
}

// csrfToken is the value every form of session s carries in its csrf field.
func (a *API) csrfToken(s session) string {
	return base64.RawURLEncoding.EncodeToString(a.sign("csrf:" + s.id))
}

// validCSRF reports whether got is session s's CSRF token.
func (a *API) validCSRF(s session, got string) bool {
	mac, err := base64.RawURLEncoding.DecodeString(got)
	return err == nil && s.id != "" && hmac.Equal(mac, a.sign("csrf:"+s.id))
}

// secure reports whether r reached the user over TLS: directly, or through
// a trusted proxy that says so in X-Forwarded-Proto.
func (a *API) secure(r *http.Request) bool {
	if pki.PeerRole(r) == pki.RoleManager {
		// Forwarded by another replica over the cluster listener: it says
		// how the user reached it.
		return r.Header.Get("X-Forwarded-Proto") == "https"
	}
	if r.TLS != nil {
		return true
	}
	if len(a.cfg.TrustedProxies) == 0 || r.Header.Get("X-Forwarded-Proto") != "https" {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	for _, p := range a.cfg.TrustedProxies {
		if p.Contains(ap.Addr().Unmap()) {
			return true
		}
	}
	return false
}
