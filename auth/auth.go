// Package auth authenticates HTTP calls: calls between memcache processes
// with a shared cluster secret, and an operator's calls to a manager with
// the admin token.
package auth

import (
	"crypto/subtle"
	"net/http"

	"github.com/memcache/memcache/internal/jsonhttp"
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
