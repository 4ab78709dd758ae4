package auth

import (
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/memcache/memcache/internal/jsonhttp"
)

// The admin token is the operator's credential on a manager's public
// endpoints (the tester's admin API, the UI's login, the operator API,
// the private part of /raft/status), sent as "Authorization: Bearer
// <token>". This file is the one place that checks it.

// Bearer returns the bearer token r carries, and whether it carries one.
func Bearer(r *http.Request) (string, bool) {
	return strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
}

// TokenEqual reports, in constant time, whether got is the token want.
func TokenEqual(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// ValidAdmin reports whether r carries the admin token as its bearer
// token. An empty token accepts every request (the admin API is open).
func ValidAdmin(r *http.Request, token string) bool {
	if token == "" {
		return true
	}
	got, ok := Bearer(r)
	return ok && TokenEqual(got, token)
}

// RequireAdmin returns middleware that refuses, with 401 and a JSON error,
// requests that do not carry the admin token. An empty token lets every
// request through.
func RequireAdmin(token string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !ValidAdmin(r, token) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="memcache"`)
				jsonhttp.Error(w, http.StatusUnauthorized, "missing or wrong admin token (Authorization: Bearer <token>)")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
