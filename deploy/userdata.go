package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"
)

//go:embed provision.sh
var provisionScript []byte

//go:embed systemd/memcache-node.service
var nodeUnit []byte

// MaxUserData is EC2's limit on an instance's user data, 16 KiB before
// base64 encoding. NodeUserData refuses to render more.
const MaxUserData = 16 << 10

// The node's listeners on EC2 (the ports the security groups open).
const (
	EC2NodeHTTPAddr   = "0.0.0.0:7100"
	EC2NodeGossipAddr = "0.0.0.0:7946"
)

// NodeUserDataConfig is what a cache node's EC2 user data installs.
type NodeUserDataConfig struct {
	// Name is the node's member id in the pool (its gossip name), e.g.
	// ec2-3f9a1c2b: letters, digits, '.', '_' and '-', up to 63, starting
	// with a letter or digit. Required.
	Name string
	// Join is the managers' gossip addresses, host:port. Required.
	Join []string
	// CA is the cluster CA certificate(s), PEM: the CAs the node trusts.
	// Required.
	CA []byte
	// Cert and Key are the node's certificate of the cluster CA (role
	// node, naming the host the node advertises: its private DNS name or
	// address) and its private key, PEM. Required; they must match.
	Cert, Key []byte
	// GossipKey is the gossip encryption key itself, 16, 24 or 32 bytes
	// (what gossip.Config.SecretKey holds; not its base64 text). The
	// script writes it base64-encoded, as deploy/provision.sh secrets
	// does. Required.
	GossipKey []byte
	// ClusterSecret is the shared secret of cache and control requests.
	// Required.
	ClusterSecret string
	// BinaryURL, if set, is where the script downloads the memcache binary
	// (http or https), which must have SHA-256 BinarySHA256 (hex): on a
	// mismatch the script stops and installs nothing. If blank, the
	// binary is the one already at /usr/local/bin/memcache (in the AMI).
	BinaryURL, BinarySHA256 string
	// Env holds more settings of the node's environment file: MEMCACHE_*
	// flags (MEMCACHE_METRICS=cloudwatch) and AWS_* SDK settings
	// (AWS_REGION). A value here wins over the script's defaults
	// (MEMCACHE_HTTP_ADDR, MEMCACHE_GOSSIP_ADDR, MEMCACHE_EC2_IDENTITY);
	// MEMCACHE_NAME and MEMCACHE_JOIN come from Name and Join only. Values
	// may not hold a newline.
	Env map[string]string
}

var (
	safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	safeHost = regexp.MustCompile(`^[A-Za-z0-9.-]+$`)
	envKey   = regexp.MustCompile(`^(MEMCACHE|AWS)_[A-Z0-9_]+$`)
	sha256re = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
)

// reservedEnv are the MEMCACHE_* variables Env may not set: fields of the
// config, or not flags (provision.sh does not write them).
var reservedEnv = []string{"MEMCACHE_NAME", "MEMCACHE_JOIN", "MEMCACHE_BIN"}

// validate returns every problem of c, joined.
func (c NodeUserDataConfig) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !safeName.MatchString(c.Name) {
		bad("Name %q: want letters, digits, '.', '_' and '-' (up to 63, the first a letter or digit)", c.Name)
	}
	if len(c.Join) == 0 {
		bad("Join is empty: want the managers' gossip addresses (host:port)")
	}
	for _, j := range c.Join {
		if err := checkHostPort(j); err != nil {
			bad("Join %q: %v", j, err)
		}
	}
	if err := checkCA(c.CA); err != nil {
		bad("CA: %v", err)
	}
	switch {
	case len(c.Cert) == 0 || len(c.Key) == 0:
		bad("Cert and Key are required (the node's certificate of the cluster CA, PEM)")
	default:
		if _, err := tls.X509KeyPair(c.Cert, c.Key); err != nil {
			bad("Cert and Key: %v", err)
		}
	}
	switch n := len(c.GossipKey); {
	case n != 16 && n != 24 && n != 32:
		bad("GossipKey is %d bytes, want the key itself, 16, 24 or 32 bytes", n)
	case looksBase64Key(c.GossipKey):
		bad("GossipKey is base64 text; want the decoded key (16, 24 or 32 bytes)")
	}
	if c.ClusterSecret == "" {
		bad("ClusterSecret is required")
	} else if strings.ContainsAny(c.ClusterSecret, "\r\n\x00") {
		bad("ClusterSecret may not hold a newline or NUL")
	}
	if c.BinaryURL != "" {
		if u, err := url.Parse(c.BinaryURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("BinaryURL %q: want an http or https URL", c.BinaryURL)
		} else if strings.ContainsAny(c.BinaryURL, "\r\n\x00") {
			bad("BinaryURL may not hold a newline or NUL")
		}
		if !sha256re.MatchString(c.BinarySHA256) {
			bad("BinarySHA256 %q: want the binary's SHA-256, 64 hex digits", c.BinarySHA256)
		}
	} else if c.BinarySHA256 != "" {
		bad("BinarySHA256 without BinaryURL")
	}
	for _, k := range slices.Sorted(maps.Keys(c.Env)) {
		v := c.Env[k]
		switch {
		case !envKey.MatchString(k):
			bad("Env %s: only MEMCACHE_* and AWS_* variables (upper case) go to the node's environment file", k)
		case slices.Contains(reservedEnv, k) || strings.HasPrefix(k, "MEMCACHE_TEST_"):
			bad("Env %s: set by the config (Name, Join) or not a flag of memcache node", k)
		case strings.ContainsAny(v, "\r\n\x00"):
			bad("Env %s: a value may not hold a newline or NUL", k)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("deploy: node user data: %w", errors.Join(errs...))
	}
	return nil
}

// checkHostPort checks a gossip address: host (a name or an IP address,
// IPv6 in brackets) and a port 1..65535.
func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q: want 1..65535", port)
	}
	if net.ParseIP(host) == nil && !safeHost.MatchString(host) {
		return fmt.Errorf("host %q: want an IP address or a DNS name", host)
	}
	return nil
}

// checkCA checks that pemData holds at least one certificate and nothing
// else.
func checkCA(pemData []byte) error {
	n := 0
	for rest := pemData; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return errors.New("not PEM")
			}
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("a PEM block of type %s, want only certificates", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return errors.New("required: the cluster CA certificate(s), PEM")
	}
	return nil
}

// looksBase64Key reports whether k is the base64 text of a 16, 24 or 32
// byte key rather than a key (a random key is base64 text by chance with
// probability 4^-len).
func looksBase64Key(k []byte) bool {
	d, err := base64.StdEncoding.DecodeString(string(k))
	return err == nil && (len(d) == 16 || len(d) == 24 || len(d) == 32)
}

// NodeUserData renders the user data of an EC2 instance that runs a cache
// node: a bash script (at most MaxUserData bytes) that, run as root at first
// boot by cloud-init,
//
//   - unpacks into a temporary directory (umask 077, removed when the
//     script exits, pass or fail) the deploy/provision.sh and
//     systemd/memcache-node.service of this build, the CA, the node's
//     certificate and key, the gossip key and the cluster secret, all
//     carried in the script as a base64 tar.gz;
//   - with BinaryURL, downloads the binary (curl, retried) and checks its
//     SHA-256, stopping before anything is installed on a mismatch;
//   - runs provision.sh node with only these settings in its environment:
//     MEMCACHE_NAME=Name, MEMCACHE_JOIN=Join (comma-separated),
//     MEMCACHE_EC2_IDENTITY=true (the node advertises the addresses IMDS
//     gives), MEMCACHE_HTTP_ADDR=0.0.0.0:7100,
//     MEMCACHE_GOSSIP_ADDR=0.0.0.0:7946, and Env. provision.sh installs
//     everything under PREFIX and, on a live system, enables and starts
//     memcache-node.service.
//
// The script honours PREFIX from its environment (default /), as
// provision.sh does: with another PREFIX it installs under that directory
// and needs no root or systemd, which is how the tests run it.
//
// User data is not secret from the instance: any process on it can read it
// from IMDS, and so can anyone allowed ec2:DescribeInstanceAttribute.
func NodeUserData(cfg NodeUserDataConfig) ([]byte, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	payload, err := nodePayload(cfg)
	if err != nil {
		return nil, fmt.Errorf("deploy: node user data: %w", err)
	}
	env := []string{
		"MEMCACHE_NAME=" + cfg.Name,
		"MEMCACHE_JOIN=" + strings.Join(cfg.Join, ","),
	}
	defaults := map[string]string{
		"MEMCACHE_EC2_IDENTITY": "true",
		"MEMCACHE_HTTP_ADDR":    EC2NodeHTTPAddr,
		"MEMCACHE_GOSSIP_ADDR":  EC2NodeGossipAddr,
	}
	for _, k := range slices.Sorted(maps.Keys(defaults)) {
		if _, ok := cfg.Env[k]; !ok {
			env = append(env, k+"="+defaults[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(cfg.Env)) {
		env = append(env, k+"="+cfg.Env[k])
	}
	var out bytes.Buffer
	err = userDataTemplate.Execute(&out, map[string]any{
		"Name": cfg.Name, "URL": cfg.BinaryURL, "SHA256": strings.ToLower(cfg.BinarySHA256),
		"Env": env, "Payload": wrap(base64.StdEncoding.EncodeToString(payload), 76),
	})
	if err != nil {
		return nil, fmt.Errorf("deploy: node user data: %w", err)
	}
	if out.Len() > MaxUserData {
		return nil, fmt.Errorf("deploy: node user data is %d bytes, over EC2's limit of %d", out.Len(), MaxUserData)
	}
	return out.Bytes(), nil
}

// nodePayload is the tar.gz the script unpacks: provision.sh, the unit, and
// TLS_DIR (tls/) and SECRETS_DIR (secrets/) as provision.sh node reads them,
// the certificate under the name "node".
func nodePayload(cfg NodeUserDataConfig) ([]byte, error) {
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"provision.sh", 0o755, provisionScript},
		{"systemd/memcache-node.service", 0o644, nodeUnit},
		{"tls/ca.pem", 0o644, cfg.CA},
		{"tls/node.pem", 0o644, cfg.Cert},
		{"tls/node-key.pem", 0o600, cfg.Key},
		{"secrets/gossip-key", 0o600, []byte(base64.StdEncoding.EncodeToString(cfg.GossipKey) + "\n")},
		{"secrets/cluster-secret", 0o600, []byte(cfg.ClusterSecret + "\n")},
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	// A fixed time: the same config renders the same bytes.
	mtime := time.Unix(0, 0)
	for _, dir := range []string{"systemd/", "tls/", "secrets/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o700, ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: mtime, Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// wrap breaks s into lines of n characters.
func wrap(s string, n int) string {
	var b strings.Builder
	for len(s) > n {
		b.WriteString(s[:n])
		b.WriteByte('\n')
		s = s[n:]
	}
	b.WriteString(s)
	return b.String()
}

// shellQuote quotes s for bash as one word: in single quotes, each single
// quote of s closing the quotes, escaped, and reopening them.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var userDataTemplate = template.Must(template.New("userdata").Funcs(template.FuncMap{"q": shellQuote}).Parse(`#!/bin/bash
# memcache cache node {{.Name}}: EC2 user data written by deploy.NodeUserData.
# Installs the node with deploy/provision.sh node (carried below with the
# node's certificate and the cluster's secrets) and starts
# memcache-node.service. PREFIX (default /) is the root to install under.
set -euo pipefail
umask 077
PREFIX=${PREFIX:-/}
root=${PREFIX%/}
say() { echo "memcache-userdata: $*"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
base64 -d >"$work/payload.tar.gz" <<'PAYLOAD'
{{.Payload}}
PAYLOAD
tar -xzf "$work/payload.tar.gz" -C "$work" --no-same-owner
rm -f "$work/payload.tar.gz"
{{- if .URL}}
url={{q .URL}}
want={{q .SHA256}}
say "downloading $url"
curl -fsSL --retry 10 --retry-delay 3 --retry-connrefused --connect-timeout 10 --max-time 600 -o "$work/memcache" "$url"
got=$(sha256sum "$work/memcache" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
	echo "memcache-userdata: $url has SHA-256 $got, want $want; nothing installed" >&2
	exit 1
fi
chmod 755 "$work/memcache"
bin=$work/memcache
{{- else}}
bin=$root/usr/local/bin/memcache
if [ ! -x "$bin" ]; then
	echo "memcache-userdata: no $bin (no binary URL given, so the image must have it); nothing installed" >&2
	exit 1
fi
{{- end}}
say "installing cache node {{.Name}} under $PREFIX"
env -i PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}" PREFIX="$PREFIX" \
	MEMCACHE_BIN="$bin" TLS_DIR="$work/tls" TLS_NAME=node SECRETS_DIR="$work/secrets" \
{{- range .Env}}
	{{q .}} \
{{- end}}
	bash "$work/provision.sh" node
say "done"
`))
