package deploy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/memcache/memcache/internal/systemd"
	"github.com/memcache/memcache/internal/testbin"
	"github.com/memcache/memcache/pki"
)

// userDataConfig is a realistic node config: a certificate of a real CA for
// *.ec2.internal (as the ec2 provisioner's one certificate for every node),
// three managers to join, a binary URL and CloudWatch settings.
func userDataConfig(t *testing.T) NodeUserDataConfig {
	t.Helper()
	dir := t.TempDir()
	if err := pki.CreateCA(dir, 0); err != nil {
		t.Fatal(err)
	}
	if err := pki.CreateCert(dir, pki.CertRequest{Name: "ec2-node", Role: pki.RoleNode, Hosts: []string{"*.ec2.internal"}}); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	key := make([]byte, 32)
	rand.Read(key)
	secret := make([]byte, 24)
	rand.Read(secret)
	return NodeUserDataConfig{
		Name:          "ec2-3f9a1c2b",
		Join:          []string{"ip-10-0-1-11.ec2.internal:7400", "10.0.2.12:7400", "10.0.3.13:7400"},
		CA:            read("ca.pem"),
		Cert:          read("ec2-node.pem"),
		Key:           read("ec2-node-key.pem"),
		GossipKey:     key,
		ClusterSecret: hex.EncodeToString(secret),
		BinaryURL:     "https://memcache-releases.s3.eu-west-1.amazonaws.com/v1.4.2/memcache-linux-amd64",
		BinarySHA256:  strings.Repeat("ab", 32),
		Env: map[string]string{
			"MEMCACHE_METRICS":         "cloudwatch",
			"MEMCACHE_CLOUDWATCH_POOL": "prod-eu",
			"MEMCACHE_CAPACITY_MB":     "512",
			"AWS_REGION":               "eu-west-1",
		},
	}
}

func render(t *testing.T, cfg NodeUserDataConfig) []byte {
	t.Helper()
	script, err := NodeUserData(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return script
}

func TestNodeUserDataRenders(t *testing.T) {
	cfg := userDataConfig(t)
	script := render(t, cfg)
	t.Logf("user data: %d bytes of EC2's %d", len(script), MaxUserData)
	if len(script) >= MaxUserData {
		t.Errorf("user data is %d bytes, want < %d (EC2's limit)", len(script), MaxUserData)
	}
	if !bytes.HasPrefix(script, []byte("#!/bin/bash\n")) || !bytes.Contains(script, []byte("\nset -euo pipefail\n")) {
		t.Errorf("user data does not start as a strict bash script:\n%s", script[:min(len(script), 400)])
	}
	path := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(path, script, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	if again := render(t, cfg); !bytes.Equal(again, script) {
		t.Error("two renderings of one config differ")
	}
	// Without a binary URL the download is not in the script.
	cfg.BinaryURL, cfg.BinarySHA256 = "", ""
	if s := render(t, cfg); bytes.Contains(s, []byte("curl")) {
		t.Error("a script without a binary URL downloads")
	}
}

func TestNodeUserDataRefusesBadConfigs(t *testing.T) {
	base := userDataConfig(t)
	other := userDataConfig(t) // another CA's key
	for _, tc := range []struct {
		name   string
		change func(*NodeUserDataConfig)
		want   string
	}{
		{"no name", func(c *NodeUserDataConfig) { c.Name = "" }, "Name"},
		{"name with a space", func(c *NodeUserDataConfig) { c.Name = "ec2 node" }, "Name"},
		{"name with a quote", func(c *NodeUserDataConfig) { c.Name = "ec2'node" }, "Name"},
		{"name with a slash", func(c *NodeUserDataConfig) { c.Name = "../etc" }, "Name"},
		{"no join", func(c *NodeUserDataConfig) { c.Join = nil }, "Join is empty"},
		{"join without a port", func(c *NodeUserDataConfig) { c.Join = []string{"10.0.1.11"} }, "Join"},
		{"join port 0", func(c *NodeUserDataConfig) { c.Join = []string{"10.0.1.11:0"} }, "port"},
		{"join without a host", func(c *NodeUserDataConfig) { c.Join = []string{":7400"} }, "host"},
		{"join with a comma", func(c *NodeUserDataConfig) { c.Join = []string{"a,b:7400"} }, "host"},
		{"no CA", func(c *NodeUserDataConfig) { c.CA = nil }, "CA"},
		{"CA not PEM", func(c *NodeUserDataConfig) { c.CA = []byte("ca") }, "CA"},
		{"key as CA", func(c *NodeUserDataConfig) { c.CA = c.Key }, "CA"},
		{"no cert", func(c *NodeUserDataConfig) { c.Cert = nil }, "Cert and Key are required"},
		{"no key", func(c *NodeUserDataConfig) { c.Key = nil }, "Cert and Key are required"},
		{"key of another cert", func(c *NodeUserDataConfig) { c.Key = other.Key }, "Cert and Key"},
		{"no gossip key", func(c *NodeUserDataConfig) { c.GossipKey = nil }, "GossipKey"},
		{"short gossip key", func(c *NodeUserDataConfig) { c.GossipKey = make([]byte, 8) }, "GossipKey"},
		{"gossip key as base64", func(c *NodeUserDataConfig) {
			c.GossipKey = []byte(base64.StdEncoding.EncodeToString(make([]byte, 24))) // 32 characters
		}, "base64"},
		{"no cluster secret", func(c *NodeUserDataConfig) { c.ClusterSecret = "" }, "ClusterSecret"},
		{"cluster secret with a newline", func(c *NodeUserDataConfig) { c.ClusterSecret = "a\nb" }, "ClusterSecret"},
		{"binary URL not http", func(c *NodeUserDataConfig) { c.BinaryURL = "file:///tmp/memcache" }, "BinaryURL"},
		{"binary URL without sha256", func(c *NodeUserDataConfig) { c.BinarySHA256 = "" }, "BinarySHA256"},
		{"sha256 too short", func(c *NodeUserDataConfig) { c.BinarySHA256 = "abcd" }, "BinarySHA256"},
		{"sha256 without URL", func(c *NodeUserDataConfig) { c.BinaryURL = "" }, "BinarySHA256 without BinaryURL"},
		{"env other than MEMCACHE_ and AWS_", func(c *NodeUserDataConfig) { c.Env = map[string]string{"PATH": "/tmp"} }, "Env PATH"},
		{"env lower case", func(c *NodeUserDataConfig) { c.Env = map[string]string{"AWS_region": "x"} }, "Env AWS_region"},
		{"env sets the name", func(c *NodeUserDataConfig) { c.Env = map[string]string{"MEMCACHE_NAME": "x"} }, "Env MEMCACHE_NAME"},
		{"env sets the join", func(c *NodeUserDataConfig) { c.Env = map[string]string{"MEMCACHE_JOIN": "x:1"} }, "Env MEMCACHE_JOIN"},
		{"env sets the binary", func(c *NodeUserDataConfig) { c.Env = map[string]string{"MEMCACHE_BIN": "/tmp/x"} }, "Env MEMCACHE_BIN"},
		{"env value with a newline", func(c *NodeUserDataConfig) { c.Env = map[string]string{"AWS_REGION": "eu\nMEMCACHE_INSECURE=true"} }, "newline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			cfg.Join = slices.Clone(base.Join)
			tc.change(&cfg)
			script, err := NodeUserData(cfg)
			if err == nil {
				t.Fatalf("rendered %d bytes, want an error about %s", len(script), tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// TestNodeUserDataQuotesValues: a value with shell syntax reaches the
// environment file as given, and runs nothing.
func TestNodeUserDataQuotesValues(t *testing.T) {
	cfg := userDataConfig(t)
	cfg.BinaryURL, cfg.BinarySHA256 = "", ""
	canary := filepath.Join(t.TempDir(), "canary")
	value := `it's "$(touch ` + canary + `)" $HOME ` + "`touch " + canary + "`"
	cfg.Env = map[string]string{"MEMCACHE_CLOUDWATCH_POOL": value}
	prefix := t.TempDir()
	placeBinary(t, prefix, []byte("#!/bin/sh\n"))
	if out, err := runUserData(t, render(t, cfg), prefix); err != nil {
		t.Fatalf("user data: %v\n%s", err, out)
	}
	if _, err := os.Stat(canary); err == nil {
		t.Fatal("a value was run as a command")
	}
	env, err := systemd.ReadEnvFile(filepath.Join(prefix, "etc/memcache/node.env"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(env, "MEMCACHE_CLOUDWATCH_POOL="+value) {
		t.Errorf("node.env: %q, want MEMCACHE_CLOUDWATCH_POOL=%q", env, value)
	}
}

// placeBinary puts a memcache binary into prefix, as an AMI would have it.
func placeBinary(t *testing.T, prefix string, data []byte) {
	t.Helper()
	p := filepath.Join(prefix, "usr/local/bin/memcache")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// runUserData runs script as cloud-init would, but with PREFIX=prefix and
// its own temporary directory, which it checks the script left empty.
func runUserData(t *testing.T, script []byte, prefix string) ([]byte, error) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "user-data")
	if err := os.WriteFile(path, script, 0o700); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", path)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PREFIX=" + prefix, "TMPDIR=" + tmp}
	out, err := cmd.CombinedOutput()
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("the script left %d entries in its temporary directory (the secrets): %v", len(left), left)
	}
	return out, err
}

// serveBinary serves data at /memcache and returns its URL and SHA-256.
func serveBinary(t *testing.T, data []byte) (string, string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/memcache" {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	}))
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(data)
	return srv.URL + "/memcache", hex.EncodeToString(sum[:])
}

// TestNodeUserDataInstalls runs the script with PREFIX set: it downloads
// the binary from its URL, checks it, and provision.sh node installs it with
// the certificate, the secrets, the unit and an environment file of the
// node's settings, which start it the way systemd would.
func TestNodeUserDataInstalls(t *testing.T) {
	bin := testbin.Path(t)
	binData, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	cfg := userDataConfig(t)
	cfg.BinaryURL, cfg.BinarySHA256 = serveBinary(t, binData)
	prefix := t.TempDir()
	out, err := runUserData(t, render(t, cfg), prefix)
	if err != nil {
		t.Fatalf("user data: %v\n%s", err, out)
	}
	t.Logf("user data output:\n%s", out)

	files := tree(t, prefix)
	for file, want := range map[string]struct {
		mode string
		data []byte
	}{
		"usr/local/bin/memcache":                   {"-rwxr-xr-x", binData},
		"etc/memcache/tls/ca.pem":                  {"-rw-r--r--", cfg.CA},
		"etc/memcache/tls/node.pem":                {"-rw-r--r--", cfg.Cert},
		"etc/memcache/tls/node-key.pem":            {"-rw-------", cfg.Key},
		"etc/memcache/secrets/gossip-key":          {"-rw-------", []byte(base64.StdEncoding.EncodeToString(cfg.GossipKey) + "\n")},
		"etc/memcache/secrets/cluster-secret":      {"-rw-------", []byte(cfg.ClusterSecret + "\n")},
		"etc/systemd/system/memcache-node.service": {"-rw-r--r--", nodeUnit},
		"etc/memcache/node.env":                    {"-rw-------", nil},
	} {
		got, ok := files[file]
		if !ok {
			t.Errorf("%s not installed", file)
			continue
		}
		mode, data, _ := strings.Cut(got, " ")
		if mode != want.mode {
			t.Errorf("%s: mode %s, want %s", file, mode, want.mode)
		}
		if want.data != nil && data != string(want.data) {
			t.Errorf("%s: %d bytes, not the %d given", file, len(data), len(want.data))
		}
		delete(files, file)
	}
	if len(files) > 0 {
		t.Errorf("installed more than the node's files: %v", slices.Sorted(maps.Keys(files)))
	}

	env, err := systemd.ReadEnvFile(filepath.Join(prefix, "etc/memcache/node.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"MEMCACHE_NAME=ec2-3f9a1c2b",
		"MEMCACHE_JOIN=ip-10-0-1-11.ec2.internal:7400,10.0.2.12:7400,10.0.3.13:7400",
		"MEMCACHE_EC2_IDENTITY=true",
		"MEMCACHE_HTTP_ADDR=0.0.0.0:7100",
		"MEMCACHE_GOSSIP_ADDR=0.0.0.0:7946",
		"MEMCACHE_METRICS=cloudwatch",
		"MEMCACHE_CLOUDWATCH_POOL=prod-eu",
		"MEMCACHE_CAPACITY_MB=512",
		"AWS_REGION=eu-west-1",
		"MEMCACHE_TLS_KEY=/run/credentials/memcache-node.service/tls-key",
	} {
		if !slices.Contains(env, want) {
			t.Errorf("node.env lacks %s: %q", want, env)
		}
	}
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == "MEMCACHE_ADVERTISE_HTTP" || k == "MEMCACHE_GOSSIP_ADVERTISE" {
			t.Errorf("node.env sets %s: on EC2 the node advertises what IMDS says", kv)
		}
	}
	checkFlags(t, bin, "node", "node.env", env)

	// The unit starts the installed binary with the installed files.
	cmd, err := systemd.Command(prefix, "memcache-node.service", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(prefix, "usr/local/bin/memcache"), "node"}; !slices.Equal(cmd.Args, want) {
		t.Errorf("unit command %q, want %q", cmd.Args, want)
	}
	for _, kv := range cmd.Env {
		k, v, _ := strings.Cut(kv, "=")
		if k == "MEMCACHE_TLS_KEY" || k == "MEMCACHE_TLS_CERT" || k == "MEMCACHE_TLS_CA" || strings.HasSuffix(k, "_FILE") {
			if _, err := os.Stat(v); err != nil {
				t.Errorf("%s: %v", k, err)
			}
		}
	}
}

// TestNodeUserDataPreinstalledBinary: without a binary URL the script
// installs the binary the image has, and without one it installs nothing.
func TestNodeUserDataPreinstalledBinary(t *testing.T) {
	cfg := userDataConfig(t)
	cfg.BinaryURL, cfg.BinarySHA256 = "", ""
	script := render(t, cfg)

	prefix := t.TempDir()
	placeBinary(t, prefix, []byte("#!/bin/sh\necho memcache\n"))
	if out, err := runUserData(t, script, prefix); err != nil {
		t.Fatalf("user data: %v\n%s", err, out)
	}
	files := tree(t, prefix)
	for _, f := range []string{"etc/memcache/node.env", "etc/memcache/tls/node-key.pem", "etc/systemd/system/memcache-node.service"} {
		if _, ok := files[f]; !ok {
			t.Errorf("%s not installed", f)
		}
	}
	if got := files["usr/local/bin/memcache"]; got != "-rwxr-xr-x #!/bin/sh\necho memcache\n" {
		t.Errorf("the image's binary became %q", got)
	}

	empty := t.TempDir()
	out, err := runUserData(t, script, empty)
	if err == nil || !strings.Contains(string(out), "usr/local/bin/memcache") {
		t.Errorf("without a binary: %v, output %q; want a failure naming usr/local/bin/memcache", err, out)
	}
	if files := tree(t, empty); len(files) > 0 {
		t.Errorf("without a binary the script installed %d files", len(files))
	}
}

// TestNodeUserDataWrongChecksum: a download whose SHA-256 is not the one
// given stops the script before anything is installed.
func TestNodeUserDataWrongChecksum(t *testing.T) {
	cfg := userDataConfig(t)
	url, _ := serveBinary(t, []byte("#!/bin/sh\necho tampered\n"))
	cfg.BinaryURL = url
	good := sha256.Sum256([]byte("#!/bin/sh\necho memcache\n"))
	cfg.BinarySHA256 = hex.EncodeToString(good[:])
	prefix := t.TempDir()
	out, err := runUserData(t, render(t, cfg), prefix)
	if err == nil {
		t.Fatalf("the script installed a binary with the wrong SHA-256:\n%s", out)
	}
	if !strings.Contains(string(out), "SHA-256") || !strings.Contains(string(out), "nothing installed") {
		t.Errorf("output %q does not say the SHA-256 did not match", out)
	}
	if files := tree(t, prefix); len(files) > 0 {
		t.Errorf("after a checksum mismatch %d files are installed: %v", len(files), slices.Sorted(maps.Keys(files)))
	}

	// A URL that answers 404 stops it too (curl -f).
	cfg.BinaryURL = url + ".missing"
	if out, err := runUserData(t, render(t, cfg), prefix); err == nil {
		t.Fatalf("the script went on after a failed download:\n%s", out)
	}
	if files := tree(t, prefix); len(files) > 0 {
		t.Errorf("after a failed download %d files are installed", len(files))
	}
}
