// Package pki makes the cluster's certificate authority and certificates,
// and turns them into the TLS configurations of mutual TLS between cluster
// members.
//
// Every member holds the CA certificate and a certificate of its own,
// signed by the CA, that names its hosts (IP addresses and DNS names, which
// peers verify like any TLS server name) and its role (manager, node,
// frontend or client, in a URI SAN memcache://role/<role>). The same
// certificate serves as a server and as a client certificate. A listener
// built from ServerConfig completes no handshake with a peer that does not
// present a certificate signed by the CA (and, if asked, of the right
// role), so not one message of the protocol behind it is read from such a
// peer.
//
// Certificates are read again from their files when they change, so a
// rotated certificate is used by new connections without a restart.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Role is what a certificate lets its holder be in the cluster.
type Role string

// The roles a certificate can name.
const (
	RoleManager  Role = "manager"
	RoleNode     Role = "node"
	RoleFrontend Role = "frontend"
	// RoleClient is an operator's or a tool's certificate: it may call
	// internal HTTP routes but is no member.
	RoleClient Role = "client"
)

// Roles lists every role, for flag help and validation.
var Roles = []Role{RoleManager, RoleNode, RoleFrontend, RoleClient}

func (r Role) valid() bool { return slices.Contains(Roles, r) }

// File names in a certificate directory.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// CertFiles returns the certificate and key file names of name in dir.
func CertFiles(dir, name string) (cert, key string) {
	return filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
}

// Errors returned by the package.
var (
	// ErrExists is returned when a file to create is already there.
	ErrExists = errors.New("pki: file exists")
	// ErrRole is returned for an unknown role, or a peer of the wrong role.
	ErrRole = errors.New("pki: role")
)

const roleURIPrefix = "memcache://role/"

// CreateCA makes a CA key (ECDSA P-256) and self-signed certificate valid
// for validity, in dir/ca-key.pem (mode 0600) and dir/ca.pem. It refuses
// to overwrite either file.
func CreateCA(dir string, validity time.Duration) error {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	if err := absent(certPath, keyPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := serialNumber()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "memcache cluster CA", Organization: []string{"memcache"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(dir, certPath, keyPath, der, key)
}

// CertRequest describes a certificate to sign.
type CertRequest struct {
	// Name is the file name stem: Name.pem and Name-key.pem. If blank, the
	// role.
	Name string
	// Role is the holder's role. Required.
	Role Role
	// Hosts are the IP addresses and DNS names peers reach the holder by.
	// A client certificate may have none; every other role needs one.
	Hosts []string
	// Validity is how long the certificate is valid. If zero, one year.
	Validity time.Duration
}

// CreateCert signs a certificate for req with the CA in dir and writes it
// with its key (mode 0600) into dir. It refuses to overwrite.
func CreateCert(dir string, req CertRequest) error {
	if !req.Role.valid() {
		return fmt.Errorf("%w %q: want one of %v", ErrRole, req.Role, Roles)
	}
	if len(req.Hosts) == 0 && req.Role != RoleClient {
		return fmt.Errorf("pki: a %s certificate needs at least one host (IP address or DNS name)", req.Role)
	}
	if req.Name == "" {
		req.Name = string(req.Role)
	}
	if strings.ContainsAny(req.Name, `/\`) || strings.HasPrefix(req.Name, ".") {
		return fmt.Errorf("pki: certificate name %q: want a plain file name", req.Name)
	}
	if req.Validity <= 0 {
		req.Validity = 365 * 24 * time.Hour
	}
	ca, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	certPath, keyPath := CertFiles(dir, req.Name)
	if err := absent(certPath, keyPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := serialNumber()
	if err != nil {
		return err
	}
	roleURI, err := url.Parse(roleURIPrefix + string(req.Role))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"memcache"}, OrganizationalUnit: []string{string(req.Role)}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(req.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{roleURI},
	}
	for _, h := range req.Hosts {
		h = strings.Trim(strings.TrimSpace(h), "[]")
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(dir, certPath, keyPath, der, key)
}

// RoleOf returns the role a certificate names, or "" if it names none.
func RoleOf(cert *x509.Certificate) Role {
	for _, u := range cert.URIs {
		if s := u.String(); strings.HasPrefix(s, roleURIPrefix) {
			return Role(strings.TrimPrefix(s, roleURIPrefix))
		}
	}
	return ""
}

// PeerRole returns the role of the verified client certificate of r, or ""
// if r came without one (plain HTTP).
func PeerRole(r *http.Request) Role {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return ""
	}
	return RoleOf(r.TLS.VerifiedChains[0][0])
}

// TLS holds a member's CA pool and its own certificate, read again from
// the files when they change.
type TLS struct {
	roots             *x509.CertPool
	certFile, keyFile string
	mu                sync.Mutex // guards the fields below
	cert              *tls.Certificate
	certMod, keyMod   time.Time
	lastCheck         time.Time
}

// Load reads the CA certificates (a PEM bundle: during a CA rotation it
// holds the old and the new CA) and the member's certificate and key.
func Load(caFile, certFile, keyFile string) (*TLS, error) {
	if caFile == "" || certFile == "" || keyFile == "" {
		return nil, errors.New("pki: the CA, certificate and key files are all required")
	}
	pemCA, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemCA) {
		return nil, fmt.Errorf("pki: %s holds no PEM certificate", caFile)
	}
	t := &TLS{roots: roots, certFile: certFile, keyFile: keyFile}
	if _, err := t.certificate(); err != nil {
		return nil, err
	}
	return t, nil
}

// Dir loads the CA in dir and the certificate called name in dir.
func Dir(dir, name string) (*TLS, error) {
	cert, key := CertFiles(dir, name)
	return Load(filepath.Join(dir, CAFile), cert, key)
}

// certificate returns the current certificate, re-reading the files at
// most once a second when their modification times changed. A rotated pair
// that does not load keeps the previous certificate in use.
func (t *TLS) certificate() (*tls.Certificate, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cert != nil && time.Since(t.lastCheck) < time.Second {
		return t.cert, nil
	}
	t.lastCheck = time.Now()
	cst, err1 := os.Stat(t.certFile)
	kst, err2 := os.Stat(t.keyFile)
	if err := errors.Join(err1, err2); err != nil {
		if t.cert != nil {
			return t.cert, nil
		}
		return nil, fmt.Errorf("pki: %w", err)
	}
	if t.cert != nil && cst.ModTime().Equal(t.certMod) && kst.ModTime().Equal(t.keyMod) {
		return t.cert, nil
	}
	pair, err := tls.LoadX509KeyPair(t.certFile, t.keyFile)
	if err != nil {
		if t.cert != nil {
			return t.cert, nil
		}
		return nil, fmt.Errorf("pki: certificate %s: %w", t.certFile, err)
	}
	if t.cert == nil {
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: t.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("pki: certificate %s is not signed by the cluster CA: %w", t.certFile, err)
		}
	}
	t.cert, t.certMod, t.keyMod = &pair, cst.ModTime(), kst.ModTime()
	return t.cert, nil
}

// Role returns the role the member's own certificate names.
func (t *TLS) Role() Role {
	c, err := t.certificate()
	if err != nil || c.Leaf == nil {
		return ""
	}
	return RoleOf(c.Leaf)
}

// ServerConfig is the configuration of a listener that admits only peers
// whose certificate the cluster CA signed and, if roles are given, that
// names one of them. Refused peers fail the handshake.
func (t *TLS) ServerConfig(roles ...Role) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  t.roots,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return t.certificate()
		},
		VerifyConnection: requireRole(roles),
	}
}

// ClientConfig is the configuration of a connection to a cluster member:
// it presents the member's certificate and verifies the server's against
// the cluster CA and the name dialled; if roles are given, the server's
// certificate must name one of them.
func (t *TLS) ClientConfig(roles ...Role) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    t.roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return t.certificate()
		},
		VerifyConnection: requireRole(roles),
	}
}

func requireRole(roles []Role) func(tls.ConnectionState) error {
	if len(roles) == 0 {
		return nil
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: no peer certificate", ErrRole)
		}
		if got := RoleOf(cs.PeerCertificates[0]); !slices.Contains(roles, got) {
			return fmt.Errorf("%w: peer %q is a %q, want %v", ErrRole, cs.PeerCertificates[0].Subject.CommonName, got, roles)
		}
		return nil
	}
}

// Transport returns an HTTP transport for calls to cluster members: a
// clone of http.DefaultTransport that presents t's certificate. A nil t
// returns a plain clone.
func Transport(t *TLS) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if t != nil {
		tr.TLSClientConfig = t.ClientConfig()
	}
	return tr
}

// Scheme is the URL scheme of a cluster listener: https with t, http
// without.
func Scheme(t *TLS) string {
	if t != nil {
		return "https"
	}
	return "http"
}

// Listen wraps ln so that it admits only peers ServerConfig(roles...)
// admits. A nil t returns ln unchanged.
//
// Accept returns at once; the handshake runs on the connection's first
// Read or Write, so it is bounded by the deadline its server sets: an
// http.Server sets min(ReadHeaderTimeout, ReadTimeout, WriteTimeout) (the
// roles' servers: 10 s by default), so a peer that connects and stays
// silent is dropped. A server that sets no deadline must call
// HandshakeContext itself, with one.
func Listen(ln net.Listener, t *TLS, roles ...Role) net.Listener {
	if t == nil {
		return ln
	}
	return tls.NewListener(ln, t.ServerConfig(roles...))
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA certificate (make one with `memcache tls ca create`): %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("pki: %s or %s is not PEM", CAFile, CAKeyFile)
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA key: %w", err)
	}
	return ca, key, nil
}

func writePair(dir, certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, path)
		}
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func absent(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, p)
		}
	}
	return nil
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// Ensure makes, in dir, the CA unless it is there and a certificate named
// after each role unless it is there, for hosts. `up` uses it so that its
// processes talk mutual TLS without any setup.
func Ensure(dir string, hosts []string, roles ...Role) error {
	if _, err := os.Stat(filepath.Join(dir, CAFile)); errors.Is(err, os.ErrNotExist) {
		if err := CreateCA(dir, 10*365*24*time.Hour); err != nil {
			return err
		}
	}
	for _, r := range roles {
		cert, _ := CertFiles(dir, string(r))
		if _, err := os.Stat(cert); err == nil {
			continue
		}
		if err := CreateCert(dir, CertRequest{Role: r, Hosts: hosts, Validity: 10 * 365 * 24 * time.Hour}); err != nil {
			return err
		}
	}
	return nil
}
