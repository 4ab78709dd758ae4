package pki_test

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/pki"
)

// newCA makes a CA in a fresh directory with a certificate per role for
// 127.0.0.1, ::1 and localhost.
func newCA(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Ensure(dir, []string{"127.0.0.1", "::1", "localhost"}, pki.RoleManager, pki.RoleNode, pki.RoleFrontend); err != nil {
		t.Fatal(err)
	}
	if err := pki.CreateCert(dir, pki.CertRequest{Role: pki.RoleClient}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func load(t *testing.T, dir, name string) *pki.TLS {
	t.Helper()
	tl, err := pki.Dir(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// serve starts an HTTPS server that admits only what srv's ServerConfig
// admits, and counts the requests it read.
func serve(t *testing.T, srv *pki.TLS, roles ...pki.Role) (string, *int) {
	t.Helper()
	n := new(int)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*n++
		io.WriteString(w, string(pki.PeerRole(r)))
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go hs.Serve(pki.Listen(ln, srv, roles...))
	t.Cleanup(func() { hs.Close() })
	return "https://" + ln.Addr().String(), n
}

func get(url string, cfg *tls.Config) (string, error) {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestMutualTLSAdmitsOnlyTheClusterCAsCertificates(t *testing.T) {
	dir := newCA(t)
	other := newCA(t) // another cluster's CA
	url, reads := serve(t, load(t, dir, "node"))

	got, err := get(url, load(t, dir, "frontend").ClientConfig())
	if err != nil || got != "frontend" {
		t.Fatalf("member of the cluster: got %q, %v; want its role, frontend", got, err)
	}
	cases := map[string]*tls.Config{
		"no certificate":                   {RootCAs: load(t, dir, "frontend").ClientConfig().RootCAs},
		"a certificate of another CA":      load(t, other, "frontend").ClientConfig(),
		"another CA's client, our CA pool": withRoots(load(t, other, "manager").ClientConfig(), load(t, dir, "manager").ClientConfig()),
	}
	for name, cfg := range cases {
		if _, err := get(url, cfg); err == nil {
			t.Errorf("%s: the request was served, want the handshake refused", name)
		}
	}
	if *reads != 1 {
		t.Errorf("the server read %d requests, want 1: a refused peer must not get a single request read", *reads)
	}
}

func withRoots(cfg, from *tls.Config) *tls.Config {
	cfg.RootCAs = from.RootCAs
	return cfg
}

func TestAListenerForManagersRefusesOtherRoles(t *testing.T) {
	dir := newCA(t)
	url, reads := serve(t, load(t, dir, "manager"), pki.RoleManager)
	for _, r := range []string{"node", "frontend", "client"} {
		if _, err := get(url, load(t, dir, r).ClientConfig()); err == nil {
			t.Errorf("a %s certificate was served by a managers-only listener", r)
		}
	}
	if got, err := get(url, load(t, dir, "manager").ClientConfig()); err != nil || got != "manager" {
		t.Fatalf("manager: got %q, %v", got, err)
	}
	if *reads != 1 {
		t.Errorf("read %d requests, want 1", *reads)
	}
	// And a client that wants a manager refuses a node posing as one.
	nodeURL, _ := serve(t, load(t, dir, "node"))
	if _, err := get(nodeURL, load(t, dir, "frontend").ClientConfig(pki.RoleManager)); !errorsIsRole(err) {
		t.Errorf("client wanting a manager dialled a node: err %v, want a role error", err)
	}
}

func errorsIsRole(err error) bool {
	return err != nil && (errors.Is(err, pki.ErrRole) || strings.Contains(err.Error(), "pki: role"))
}

func TestTheServerNameIsVerified(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Ensure(dir, []string{"10.9.9.9"}, pki.RoleNode, pki.RoleFrontend); err != nil {
		t.Fatal(err)
	}
	url, _ := serve(t, load(t, dir, "node")) // served on 127.0.0.1, certified for 10.9.9.9
	if _, err := get(url, load(t, dir, "frontend").ClientConfig()); err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("got err %v, want a certificate not valid for 127.0.0.1", err)
	}
}

func TestCreateRefusesToOverwriteAndBadRequests(t *testing.T) {
	dir := newCA(t)
	if err := pki.CreateCA(dir, time.Hour); !errors.Is(err, pki.ErrExists) {
		t.Errorf("CreateCA over a CA: %v, want ErrExists", err)
	}
	if err := pki.CreateCert(dir, pki.CertRequest{Role: pki.RoleNode, Hosts: []string{"h"}}); !errors.Is(err, pki.ErrExists) {
		t.Errorf("CreateCert over node.pem: %v, want ErrExists", err)
	}
	for name, req := range map[string]pki.CertRequest{
		"unknown role":   {Role: "admin", Hosts: []string{"h"}, Name: "x"},
		"no host":        {Role: pki.RoleManager, Name: "y"},
		"path in a name": {Role: pki.RoleNode, Hosts: []string{"h"}, Name: "../z"},
	} {
		if err := pki.CreateCert(dir, req); err == nil {
			t.Errorf("%s: created, want an error", name)
		}
	}
	if err := pki.CreateCert(t.TempDir(), pki.CertRequest{Role: pki.RoleNode, Hosts: []string{"h"}}); err == nil {
		t.Error("a certificate without a CA was made")
	}
	if _, err := os.Stat(filepath.Join(dir, "x.pem")); err == nil {
		t.Error("a refused request left a file")
	}
}

func TestARotatedCertificateIsServedWithoutARestart(t *testing.T) {
	dir := newCA(t)
	srv := load(t, dir, "node")
	url, _ := serve(t, srv)
	serial := func() string {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: load(t, dir, "frontend").ClientConfig(), DisableKeepAlives: true}}
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	// Rotate: a new certificate for the same name, signed by the same CA.
	cert, key := pki.CertFiles(dir, "node")
	os.Remove(cert)
	os.Remove(key)
	if err := pki.CreateCert(dir, pki.CertRequest{Role: pki.RoleNode, Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Minute)
	os.Chtimes(cert, future, future) // a distinct modification time even on coarse clocks
	deadline := time.Now().Add(30 * time.Second)
	for serial() == before {
		if time.Now().After(deadline) {
			t.Fatal("the old certificate is still served 30 s after the rotation")
		}
		time.Sleep(100 * time.Millisecond) // polling the condition, not waiting for it
	}
}

func TestListenWithoutTLSIsPlain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if pki.Listen(ln, nil) != ln || pki.Scheme(nil) != "http" {
		t.Fatal("a nil TLS must leave the listener plain")
	}
}

// TestAWildcardNodeCertificateServesEveryEC2Host: the one node certificate
// of an EC2 pool names *.ec2.internal; a manager dialling a node by its
// IMDS local-hostname accepts it, and a name outside the wildcard does not.
func TestAWildcardNodeCertificateServesEveryEC2Host(t *testing.T) {
	dir := newCA(t)
	if err := pki.CreateCert(dir, pki.CertRequest{Name: "ec2-nodes", Role: pki.RoleNode, Hosts: []string{"*.ec2.internal"}}); err != nil {
		t.Fatal(err)
	}
	url, _ := serve(t, load(t, dir, "ec2-nodes"))
	addr := strings.TrimPrefix(url, "https://")
	client := func(name string) *tls.Config {
		cfg := load(t, dir, "manager").ClientConfig(pki.RoleNode)
		cfg.ServerName = name
		return cfg
	}
	for _, name := range []string{"ip-10-0-1-23.ec2.internal", "i-0123456789abcdef0.ec2.internal"} {
		if _, err := get("https://"+addr, client(name)); err != nil {
			t.Errorf("dialling a node as %s: %v, want the wildcard certificate accepted", name, err)
		}
	}
	for _, name := range []string{"ip-10-0-1-23.eu-west-1.compute.internal", "a.b.ec2.internal"} {
		if _, err := get("https://"+addr, client(name)); err == nil {
			t.Errorf("dialling a node as %s: accepted, want the certificate refused for that name", name)
		}
	}
}
