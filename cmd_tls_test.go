package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/memcache/memcache/pki"
)

// TestTLSCommandsMakeACAAndRoleCertificates runs `memcache tls ca create`
// and `memcache tls cert create` and checks what they wrote: a CA, and a
// certificate it signed naming the role and the hosts.
func TestTLSCommandsMakeACAAndRoleCertificates(t *testing.T) {
	dir := t.TempDir()
	if _, err := runCLI(t, "tls", "ca", "create", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "tls", "cert", "create", "--dir", dir, "--role", "manager", "--host", "10.0.0.11", "--host", "m1.example", "--name", "m1"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "m1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if pki.RoleOf(cert) != pki.RoleManager || len(cert.IPAddresses) != 1 || cert.IPAddresses[0].String() != "10.0.0.11" ||
		len(cert.DNSNames) != 1 || cert.DNSNames[0] != "m1.example" {
		t.Errorf("m1.pem: role %q, IPs %v, DNS %v; want manager, [10.0.0.11], [m1.example]", pki.RoleOf(cert), cert.IPAddresses, cert.DNSNames)
	}
	if st, err := os.Stat(filepath.Join(dir, "m1-key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("m1-key.pem: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	if _, err := pki.Dir(dir, "m1"); err != nil {
		t.Errorf("the certificate does not load with the CA: %v", err)
	}

	// Bad input: an error, and no file written or overwritten.
	for name, args := range map[string][]string{
		"a second CA":      {"tls", "ca", "create", "--dir", dir},
		"an unknown role":  {"tls", "cert", "create", "--dir", dir, "--role", "admin", "--host", "h", "--name", "x"},
		"no host":          {"tls", "cert", "create", "--dir", dir, "--role", "node", "--name", "y"},
		"an existing name": {"tls", "cert", "create", "--dir", dir, "--role", "node", "--host", "h", "--name", "m1"},
		"no CA":            {"tls", "cert", "create", "--dir", t.TempDir(), "--role", "node", "--host", "h"},
		"zero days":        {"tls", "cert", "create", "--dir", dir, "--role", "node", "--host", "h", "--name", "z", "--days", "0"},
	} {
		if _, err := runCLI(t, args...); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	for _, f := range []string{"x.pem", "y.pem", "z.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was written by a refused command", f)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "m1.pem")); string(after) != string(b) {
		t.Error("m1.pem was overwritten")
	}
}

// TestARoleWithoutTLSRefusesToStart: no --tls-* and no --insecure is an
// error naming both ways out, before anything listens.
func TestARoleWithoutTLSRefusesToStart(t *testing.T) {
	for _, role := range []string{"manager", "node", "frontend"} {
		_, err := runCLI(t, role, "--http-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0")
		if err == nil || !strings.Contains(err.Error(), "--tls-ca") || !strings.Contains(err.Error(), "--insecure") {
			t.Errorf("%s without TLS: %v, want a refusal naming --tls-ca and --insecure", role, err)
		}
		_, err = runCLI(t, role, "--insecure", "--tls-ca", "x", "--http-addr", "127.0.0.1:0")
		if err == nil || !strings.Contains(err.Error(), "both set") {
			t.Errorf("%s with --insecure and --tls-ca: %v, want a refusal", role, err)
		}
	}
}
