// Package auth authenticates HTTP calls: calls between memcache processes
// with a shared cluster secret, and an operator's calls to a manager with
// the admin token.
package auth

import (
	"crypto/subtle"
	"net/http"
	"slices"

	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/pki"
)

// Header carries the cluster secret on cluster-internal HTTP calls.
const Header = "X-Memcache-Secret"

// Valid reports whether r carries secret. An empty secret accepts every request.
func Valid(r *http.Request, secret string) bool {
	if secret == "" {
		return true
	}
	return subtle.ConstantTimeCompare([]byte(r.Header.Get(Header)), []byte(secret)) == 1
}

// Require returns middleware that refuses, with 401, requests that do not
// carry secret. An empty secret lets every request through.
func Require(secret string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !Valid(r, secret) {
				jsonhttp.Error(w, http.StatusUnauthorized, "missing or wrong cluster secret (%s)", Header)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// Transport is an http.RoundTripper that adds the cluster secret to every
// request it sends.
type Transport struct {
	Secret string
	Base   http.RoundTripper // if nil, http.DefaultTransport
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if t.Secret == "" {
		return base.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set(Header, t.Secret)
	return base.RoundTrip(r)
}

// RequireRole admits a request that came over mutual TLS only if the
// client's certificate names one of roles (pki.PeerRole); others get 403.
// A request without TLS passes: on a plain listener (--insecure) the
// cluster secret is the only check.
func RequireRole(roles ...pki.Role) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.TLS != nil {
				if got := pki.PeerRole(r); !slices.Contains(roles, got) {
					jsonhttp.Error(w, http.StatusForbidden, "a %q certificate may not call %s %s (want %v)", got, r.Method, r.URL.Path, roles)
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}
