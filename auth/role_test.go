package auth_test

import (
	"io"
	"log"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/pki"
)

// TestRequireRoleAdmitsOnlyTheNamedRoles: over mutual TLS a route for
// managers answers 403 to every other role of the CA; on a plain listener
// it passes (the listener, not the route, decides about TLS).
func TestRequireRoleAdmitsOnlyTheNamedRoles(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Ensure(dir, []string{"127.0.0.1"}, pki.RoleManager, pki.RoleNode, pki.RoleFrontend); err != nil {
		t.Fatal(err)
	}
	load := func(name string) *pki.TLS {
		c, err := pki.Dir(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	h := auth.RequireRole(pki.RoleManager)(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	serve := func(tl *pki.TLS) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
		go srv.Serve(pki.Listen(ln, tl))
		t.Cleanup(func() { srv.Close() })
		return pki.Scheme(tl) + "://" + ln.Addr().String()
	}
	tlsURL, plainURL := serve(load("node")), serve(nil)
	for role, want := range map[string]int{"manager": 200, "node": 403, "frontend": 403} {
		c := &http.Client{Transport: pki.Transport(load(role)), Timeout: 10 * time.Second}
		resp, err := c.Get(tlsURL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("a %s certificate: %d, want %d", role, resp.StatusCode, want)
		}
	}
	resp, err := http.Get(plainURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("plain listener: %d, want 200", resp.StatusCode)
	}
}
