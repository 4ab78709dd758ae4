package deploy

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/systemd"
	"github.com/memcache/memcache/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Remove()
	os.Exit(code)
}

var roles = []string{"manager", "node", "frontend"}

// repo is the repository's top directory.
const repo = ".."

// pendingFlags are the variables of issue 9 (cluster listeners, mutual TLS)
// that are being added beside this package. A binary without the "tls"
// command predates them and is excused for these; once the binary has that
// command, every variable must be a real flag.
var pendingFlags = map[string][]string{
	"manager":  {"MEMCACHE_CLUSTER_ADDR", "MEMCACHE_ADVERTISE_CLUSTER", "MEMCACHE_TLS_CA", "MEMCACHE_TLS_CERT", "MEMCACHE_TLS_KEY", "MEMCACHE_INSECURE", "MEMCACHE_PUBLIC_TLS_CERT", "MEMCACHE_PUBLIC_TLS_KEY", "MEMCACHE_TRUSTED_PROXIES"},
	"node":     {"MEMCACHE_TLS_CA", "MEMCACHE_TLS_CERT", "MEMCACHE_TLS_KEY", "MEMCACHE_INSECURE"},
	"frontend": {"MEMCACHE_CLUSTER_ADDR", "MEMCACHE_ADVERTISE_CLUSTER", "MEMCACHE_TLS_CA", "MEMCACHE_TLS_CERT", "MEMCACHE_TLS_KEY", "MEMCACHE_INSECURE", "MEMCACHE_PUBLIC_TLS_CERT", "MEMCACHE_PUBLIC_TLS_KEY"},
}

// hasTLSCommand reports whether bin has the "tls" command (issue 9).
func hasTLSCommand(t *testing.T, bin string) bool {
	t.Helper()
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	return regexp.MustCompile(`(?m)^\s+tls\b`).Match(out)
}

// flagVars returns the environment variables of role's flags, from
// "memcache ROLE --help".
func flagVars(t *testing.T, bin, role string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, role, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", role, err, out)
	}
	vars := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$(MEMCACHE_[A-Z0-9_]+)`).FindAllSubmatch(out, -1) {
		vars[string(m[1])] = true
	}
	if len(vars) < 5 {
		t.Fatalf("%s --help lists %d variables; the help format changed?\n%s", role, len(vars), out)
	}
	return vars
}

// checkFlags fails the test for every MEMCACHE_ variable of env that is not
// a flag of role.
func checkFlags(t *testing.T, bin, role, where string, env []string) {
	t.Helper()
	flags := flagVars(t, bin, role)
	strict := hasTLSCommand(t, bin)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "MEMCACHE_") || flags[k] {
			continue
		}
		if !strict && slices.Contains(pendingFlags[role], k) {
			t.Logf("%s: %s is an issue 9 flag this binary does not have yet", where, k)
			continue
		}
		t.Errorf("%s: %s is not a flag of memcache %s", where, k, role)
	}
}

func loadUnit(t *testing.T, name string) *systemd.Unit {
	t.Helper()
	u, err := systemd.ReadUnit(filepath.Join("systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUnits(t *testing.T) {
	for _, role := range roles {
		t.Run(role, func(t *testing.T) {
			u := loadUnit(t, "memcache-"+role+".service")
			if got, want := u.ExecStart, []string{"/usr/local/bin/memcache", role}; !slices.Equal(got, want) {
				t.Errorf("ExecStart: got %q, want %q", got, want)
			}
			want := []systemd.EnvironmentFile{{Path: "/etc/memcache/" + role + ".env"}}
			if !slices.Equal(u.EnvironmentFiles, want) {
				t.Errorf("EnvironmentFile: got %+v, want %+v", u.EnvironmentFiles, want)
			}
			if len(u.Environment) > 0 {
				t.Errorf("Environment=%q: the environment file holds the whole configuration", u.Environment)
			}
			if !u.DynamicUser {
				t.Error("DynamicUser is not set")
			}
			ids := map[string]string{}
			for _, c := range u.Credentials {
				ids[c.ID] = c.Path
				if !strings.HasPrefix(c.Path, "/etc/memcache/") {
					t.Errorf("LoadCredential %s:%s is not a file provision.sh installs under /etc/memcache", c.ID, c.Path)
				}
			}
			wantIDs := []string{"tls-key", "gossip-key", "cluster-secret"}
			if role == "manager" {
				wantIDs = append(wantIDs, "admin-token")
			}
			for _, id := range wantIDs {
				if ids[id] == "" {
					t.Errorf("no LoadCredential=%s", id)
				}
			}
			if got := ids["tls-key"]; got != "/etc/memcache/tls/"+role+"-key.pem" {
				t.Errorf("tls-key credential from %q, want /etc/memcache/tls/%s-key.pem", got, role)
			}
		})
	}
	u := loadUnit(t, "memcache-manager.service")
	if !slices.Equal(u.StateDirectories, []string{"memcache/manager"}) {
		t.Errorf("manager StateDirectory: got %q, want memcache/manager", u.StateDirectories)
	}
	u = loadUnit(t, "versitygw.service")
	if len(u.ExecStart) == 0 || u.ExecStart[0] != "/usr/local/bin/versitygw" {
		t.Errorf("versitygw ExecStart: got %q", u.ExecStart)
	}
}

// exampleEnv reads an example environment file, with its commented-out
// assignments ("#MEMCACHE_X=...") as if they were set.
func exampleEnv(t *testing.T, role string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("env", role+".env.example"))
	if err != nil {
		t.Fatal(err)
	}
	uncommented := regexp.MustCompile(`(?m)^#([A-Z][A-Z0-9_]*=)`).ReplaceAll(data, []byte("$1"))
	env, err := systemd.ParseEnv(bytes.NewReader(uncommented))
	if err != nil {
		t.Fatalf("%s.env.example: %v", role, err)
	}
	return env
}

// checkPaths fails the test for a value naming a credential the unit does
// not load, or a /var/lib path outside its state directories.
func checkPaths(t *testing.T, u *systemd.Unit, where string, env []string) {
	t.Helper()
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if id, ok := strings.CutPrefix(v, "/run/credentials/"); ok {
			unit, id, _ := strings.Cut(id, "/")
			if unit != u.Name || !slices.ContainsFunc(u.Credentials, func(c systemd.Credential) bool { return c.ID == id }) {
				t.Errorf("%s: %s=%s is not a LoadCredential= of %s", where, k, v, u.Name)
			}
		}
		if strings.HasPrefix(v, "/var/lib/") && !slices.ContainsFunc(u.StateDirectories, func(d string) bool {
			return strings.HasPrefix(v, path.Join("/var/lib", d)+"/") || v == path.Join("/var/lib", d)
		}) {
			t.Errorf("%s: %s=%s is outside the unit's StateDirectory= %q (read-only under ProtectSystem=strict)", where, k, v, u.StateDirectories)
		}
	}
}

func TestExampleEnvFiles(t *testing.T) {
	bin := testbin.Path(t)
	for _, role := range roles {
		t.Run(role, func(t *testing.T) {
			env := exampleEnv(t, role)
			checkFlags(t, bin, role, role+".env.example", env)
			checkPaths(t, loadUnit(t, "memcache-"+role+".service"), role+".env.example", env)
		})
	}
}

func TestProvisionSyntax(t *testing.T) {
	if out, err := exec.Command("bash", "-n", "provision.sh").CombinedOutput(); err != nil {
		t.Fatalf("bash -n provision.sh: %v\n%s", err, out)
	}
}

// provision runs provision.sh STEP with exactly the environment env (and
// PATH), and returns its output.
func provision(t *testing.T, step string, env ...string) string {
	t.Helper()
	cmd := exec.Command("bash", "provision.sh", step)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("provision.sh %s: %v\n%s", step, err, out)
	}
	return string(out)
}

// fakeTLS writes placeholder certificate files for name into dir: the role
// steps only copy them.
func fakeTLS(t *testing.T, dir string, names ...string) {
	t.Helper()
	files := []string{"ca.pem"}
	for _, n := range names {
		files = append(files, n+".pem", n+"-key.pem")
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("placeholder "+f+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// tree returns the files under dir: path → mode and content.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[rel] = fi.Mode().String() + " " + string(data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestProvisionRoles(t *testing.T) {
	bin := testbin.Path(t)
	work := t.TempDir()
	secrets := filepath.Join(work, "secrets")
	tlsDir := filepath.Join(work, "tls")
	provision(t, "secrets", "SECRETS_DIR="+secrets)
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	fakeTLS(t, tlsDir, "m1", "n1", "f1")
	names := map[string]string{"manager": "m1", "node": "n1", "frontend": "f1"}
	for _, role := range roles {
		t.Run(role, func(t *testing.T) {
			prefix := t.TempDir()
			env := []string{
				"PREFIX=" + prefix, "MEMCACHE_BIN=" + bin, "TLS_DIR=" + tlsDir, "SECRETS_DIR=" + secrets,
				"ADDR=10.9.0.2", "MEMCACHE_NAME=" + names[role], "MEMCACHE_JOIN=10.9.0.2:7400,10.9.0.3:7400",
				"SERVICES_ADDR=10.9.0.10",
			}
			provision(t, role, env...)
			first := tree(t, prefix)
			for file, mode := range map[string]string{
				"usr/local/bin/memcache":                           "-rwxr-xr-x",
				"etc/memcache/" + role + ".env":                    "-rw-------",
				"etc/memcache/tls/ca.pem":                          "-rw-r--r--",
				"etc/memcache/tls/" + role + ".pem":                "-rw-r--r--",
				"etc/memcache/tls/" + role + "-key.pem":            "-rw-------",
				"etc/memcache/secrets/gossip-key":                  "-rw-------",
				"etc/memcache/secrets/cluster-secret":              "-rw-------",
				"etc/systemd/system/memcache-" + role + ".service": "-rw-r--r--",
			} {
				got, ok := first[file]
				if !ok {
					t.Errorf("%s not installed", file)
					continue
				}
				if !strings.HasPrefix(got, mode+" ") {
					t.Errorf("%s: mode %s, want %s", file, strings.Fields(got)[0], mode)
				}
			}
			if got := first["etc/memcache/tls/"+role+"-key.pem"]; !strings.Contains(got, names[role]+"-key.pem") {
				t.Errorf("the key installed is not %s-key.pem: %q", names[role], got)
			}

			env2, err := systemd.ReadEnvFile(filepath.Join(prefix, "etc/memcache", role+".env"))
			if err != nil {
				t.Fatal(err)
			}
			checkFlags(t, bin, role, role+".env", env2)
			u, err := systemd.Load(prefix, "memcache-"+role+".service")
			if err != nil {
				t.Fatal(err)
			}
			checkPaths(t, u, role+".env", env2)
			if !slices.Contains(env2, "MEMCACHE_NAME="+names[role]) || !slices.Contains(env2, "MEMCACHE_JOIN=10.9.0.2:7400,10.9.0.3:7400") {
				t.Errorf("%s.env lacks the settings given: %q", role, env2)
			}

			// The command the unit runs, as the network-namespace tests build it.
			cmd, err := systemd.Command(prefix, "memcache-"+role+".service", bin)
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{bin, role}; !slices.Equal(cmd.Args, want) {
				t.Errorf("Args: got %q, want %q", cmd.Args, want)
			}
			for _, kv := range cmd.Env {
				k, v, _ := strings.Cut(kv, "=")
				if k == "MEMCACHE_TLS_KEY" || k == "MEMCACHE_TLS_CERT" || k == "MEMCACHE_TLS_CA" || strings.HasSuffix(k, "_FILE") {
					if _, err := os.Stat(v); err != nil {
						t.Errorf("%s: %v", k, err)
					}
				}
			}

			// Idempotent: a second run changes nothing.
			provision(t, role, env...)
			second := tree(t, prefix)
			for f, v := range first {
				if second[f] != v {
					t.Errorf("second run changed %s", f)
				}
			}
			if len(second) != len(first) {
				t.Errorf("second run: %d files, first %d", len(second), len(first))
			}
		})
	}
}

func TestProvisionServices(t *testing.T) {
	work := t.TempDir()
	secrets := filepath.Join(work, "secrets")
	provision(t, "secrets", "SECRETS_DIR="+secrets)
	vgw := filepath.Join(work, "versitygw")
	if err := os.WriteFile(vgw, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	prefix := t.TempDir()
	provision(t, "services", "PREFIX="+prefix, "SECRETS_DIR="+secrets, "VERSITYGW_BIN="+vgw,
		"PRIVATE_ADDR=10.9.0.10", "PRIVATE_NET=10.9.0.0/24")
	cmd, err := systemd.Command(prefix, "versitygw.service", vgw)
	if err != nil {
		t.Fatal(err)
	}
	access, _ := os.ReadFile(filepath.Join(secrets, "s3-access"))
	secret, _ := os.ReadFile(filepath.Join(secrets, "s3-secret"))
	want := []string{vgw, "--port", "10.9.0.10:7070", "--access", strings.TrimSpace(string(access)),
		"--secret", strings.TrimSpace(string(secret)), "--region", "us-east-1", "--quiet", "posix", filepath.Join(prefix, "var/lib/versitygw")}
	if !slices.Equal(cmd.Args, want) {
		t.Errorf("versitygw Args:\ngot  %q\nwant %q", cmd.Args, want)
	}
}

func TestProvisionTLS(t *testing.T) {
	bin := testbin.Path(t)
	if !hasTLSCommand(t, bin) {
		t.Skip("memcache has no tls command yet (issue 9); the tls step needs it")
	}
	dir := filepath.Join(t.TempDir(), "tls")
	hosts := "m1:manager:10.9.0.2 n1:node:10.9.0.3,n1.example f1:frontend:10.9.0.4"
	provision(t, "tls", "MEMCACHE_BIN="+bin, "TLS_DIR="+dir, "TLS_HOSTS="+hosts)
	first := tree(t, dir)
	for _, f := range []string{"ca.pem", "ca-key.pem", "m1.pem", "m1-key.pem", "n1.pem", "n1-key.pem", "f1.pem", "f1-key.pem"} {
		if _, ok := first[f]; !ok {
			t.Errorf("tls step made no %s", f)
		}
	}
	// A rerun keeps what exists and adds new hosts.
	provision(t, "tls", "MEMCACHE_BIN="+bin, "TLS_DIR="+dir, "TLS_HOSTS="+hosts+" n2:node:10.9.0.5")
	second := tree(t, dir)
	for f, v := range first {
		if second[f] != v {
			t.Errorf("rerun changed %s", f)
		}
	}
	if _, ok := second["n2.pem"]; !ok {
		t.Error("rerun made no n2.pem")
	}
}

func TestVersitygwVersion(t *testing.T) {
	re := regexp.MustCompile(`VERSITYGW_VERSION:-(v[0-9.]+)`)
	ci, err := os.ReadFile(filepath.Join(repo, ".ci", "install-versitygw.sh"))
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile("provision.sh")
	if err != nil {
		t.Fatal(err)
	}
	c, p := re.FindSubmatch(ci), re.FindSubmatch(script)
	if c == nil || p == nil {
		t.Fatalf("no VERSITYGW_VERSION default in .ci/install-versitygw.sh (%q) or provision.sh (%q)", c, p)
	}
	if string(c[1]) != string(p[1]) {
		t.Errorf("versitygw version: provision.sh %s, .ci/install-versitygw.sh %s; keep them equal", p[1], c[1])
	}
}

func TestVagrantfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo, "Vagrantfile"))
	if err != nil {
		t.Fatal(err)
	}
	v := string(data)
	for _, role := range append(slices.Clone(roles), "services") {
		if !strings.Contains(v, "deploy/provision.sh "+role) {
			t.Errorf("Vagrantfile does not run deploy/provision.sh %s", role)
		}
	}
	units, err := filepath.Glob(filepath.Join("systemd", "*.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		if !strings.Contains(v, filepath.Base(u)) {
			t.Errorf("Vagrantfile does not name %s", filepath.Base(u))
		}
	}
	if !strings.Contains(v, `"debian/bookworm64"`) {
		t.Error("Vagrantfile's box is not debian/bookworm64")
	}
}

func TestVagrantValidate(t *testing.T) {
	vagrant, err := exec.LookPath("vagrant")
	if err != nil {
		if os.Getenv("MEMCACHE_TEST_REQUIRE_VAGRANT") == "1" {
			t.Fatal("vagrant not on PATH and MEMCACHE_TEST_REQUIRE_VAGRANT=1 (Debian: apt-get install vagrant)")
		}
		t.Skip("vagrant not on PATH: Vagrantfile not validated (MEMCACHE_TEST_REQUIRE_VAGRANT=1 makes this a failure)")
	}
	for _, nodes := range []string{"", "5"} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, vagrant, "validate", "--ignore-provider")
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "MEMCACHE_NODES="+nodes) // blank: the default, 2
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("MEMCACHE_NODES=%q vagrant validate --ignore-provider: %v\n%s", nodes, err, out)
		}
		if !strings.Contains(string(out), "Vagrantfile validated successfully") {
			t.Errorf("vagrant validate said:\n%s", out)
		}
		if nodes == "5" && !strings.Contains(string(out), "n5:") {
			t.Errorf("MEMCACHE_NODES=5 defined no n5:\n%s", out)
		}
	}
}

// TestProvisionIPv6 checks that an IPv6 ADDR (and SERVICES_ADDR) is
// bracketed wherever a port follows it, bare or given in brackets.
func TestProvisionIPv6(t *testing.T) {
	bin := testbin.Path(t)
	work := t.TempDir()
	secrets := filepath.Join(work, "secrets")
	tlsDir := filepath.Join(work, "tls")
	provision(t, "secrets", "SECRETS_DIR="+secrets)
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	fakeTLS(t, tlsDir, "m1", "f1")
	for _, addr := range []string{"fd00:9::2", "[fd00:9::2]"} {
		for role, want := range map[string][]string{
			"manager": {"MEMCACHE_HTTP_ADDR=[fd00:9::2]:7200", "MEMCACHE_ADVERTISE_HTTP=http://[fd00:9::2]:7200",
				"MEMCACHE_ADVERTISE_CLUSTER=https://[fd00:9::2]:7201", "MEMCACHE_RAFT_ADVERTISE=[fd00:9::2]:7300",
				"MEMCACHE_GOSSIP_ADVERTISE=[fd00:9::2]:7400"},
			"frontend": {"MEMCACHE_CLUSTER_ADDR=[fd00:9::2]:8081", "MEMCACHE_GOSSIP_ADDR=[fd00:9::2]:7500",
				"MEMCACHE_S3_ENDPOINT=http://[fd00:9::10]:7070"},
		} {
			prefix := t.TempDir()
			name := map[string]string{"manager": "m1", "frontend": "f1"}[role]
			provision(t, role, "PREFIX="+prefix, "MEMCACHE_BIN="+bin, "TLS_DIR="+tlsDir, "SECRETS_DIR="+secrets,
				"ADDR="+addr, "MEMCACHE_NAME="+name, "SERVICES_ADDR=fd00:9::10")
			env, err := systemd.ReadEnvFile(filepath.Join(prefix, "etc/memcache", role+".env"))
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range want {
				if !slices.Contains(env, kv) {
					t.Errorf("ADDR=%s: %s.env lacks %s: %q", addr, role, kv, env)
				}
			}
			if role == "frontend" && !slices.ContainsFunc(env, func(kv string) bool {
				return strings.HasPrefix(kv, "MEMCACHE_DB=postgres://") && strings.Contains(kv, "@[fd00:9::10]:5432/")
			}) {
				t.Errorf("ADDR=%s: the frontend's DSN does not bracket SERVICES_ADDR: %q", addr, env)
			}
		}
	}
}
