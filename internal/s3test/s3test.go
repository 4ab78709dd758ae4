// Package s3test starts a real S3-compatible server (versitygw) for tests.
//
// Start finds the versitygw binary on PATH, in $(go env GOBIN) or in
// $(go env GOPATH)/bin and runs it, with the posix backend over the test's
// temporary directory, until the test ends; Binary only finds it, for a
// test that runs it itself. Without versitygw it skips the
// test, or fails it when MEMCACHE_TEST_REQUIRE_S3=1. The server starts with
// no buckets; creating one is up to the caller.
package s3test

import (
	"bytes"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Credentials of the root account, and the region, of every server Start runs.
const (
	accessKey = "AKIATEST"
	secretKey = "SECRETTEST"
	region    = "us-east-1"
)

// Server is a running versitygw.
type Server struct {
	Endpoint  string // http://127.0.0.1:port
	AccessKey string // root account
	SecretKey string
	Region    string
}

// Start runs versitygw until the test ends (it is killed in t.Cleanup) and
// returns it once it answers HTTP. Without versitygw it skips the test, or
// fails it if MEMCACHE_TEST_REQUIRE_S3=1.
func Start(t testing.TB) Server {
	t.Helper()
	bin := Binary(t)
	return Server{
		Endpoint:  startVersitygw(t, bin),
		AccessKey: accessKey,
		SecretKey: secretKey,
		Region:    region,
	}
}

// Binary returns the path of the versitygw binary, for a test that runs it
// itself (in another network namespace, as its systemd unit would). Without
// versitygw it skips the test, or fails it if MEMCACHE_TEST_REQUIRE_S3=1.
func Binary(t testing.TB) string {
	t.Helper()
	bin := findVersitygw()
	if bin == "" {
		if os.Getenv("MEMCACHE_TEST_REQUIRE_S3") == "1" {
			t.Fatal("versitygw not installed; run .ci/install-versitygw.sh")
		}
		t.Skip("versitygw not found on PATH or in $(go env GOPATH)/bin; run .ci/install-versitygw.sh to test against a real S3 server (MEMCACHE_TEST_REQUIRE_S3=1 makes this a failure)")
	}
	return bin
}

// Env points the AWS SDK's default chain, for the rest of the test, at s's
// credentials and region and nothing else: no profile or session token, no
// shared config or credentials files, no IMDS, no endpoint override. Like
// t.Setenv, it cannot be used in parallel tests.
func (s Server) Env(t testing.TB) {
	t.Helper()
	none := filepath.Join(t.TempDir(), "none")
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":           s.AccessKey,
		"AWS_SECRET_ACCESS_KEY":       s.SecretKey,
		"AWS_SESSION_TOKEN":           "",
		"AWS_PROFILE":                 "",
		"AWS_DEFAULT_PROFILE":         "",
		"AWS_REGION":                  s.Region,
		"AWS_DEFAULT_REGION":          "",
		"AWS_CONFIG_FILE":             none,
		"AWS_SHARED_CREDENTIALS_FILE": none,
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_ENDPOINT_URL":            "",
		"AWS_ENDPOINT_URL_S3":         "",
	} {
		t.Setenv(k, v)
	}
}

// findVersitygw returns the path of the versitygw binary on PATH, in
// $(go env GOBIN) or in $(go env GOPATH)/bin, or "".
func findVersitygw() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	var dirs []string
	// go test puts GOROOT/bin on the PATH of the test binary.
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) == 2 {
			if gobin := strings.TrimSpace(lines[0]); gobin != "" {
				dirs = append(dirs, gobin)
			}
			for _, p := range filepath.SplitList(strings.TrimSpace(lines[1])) {
				dirs = append(dirs, filepath.Join(p, "bin"))
			}
		}
	} else {
		for _, p := range filepath.SplitList(build.Default.GOPATH) {
			dirs = append(dirs, filepath.Join(p, "bin"))
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// lockedBuffer collects a child's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startVersitygw runs versitygw with the posix backend over a temporary
// directory until the test ends, and returns its endpoint URL.
func startVersitygw(t testing.TB, bin string) string {
	t.Helper()
	root := t.TempDir()
	// The port is chosen before versitygw binds it; if another process takes
	// it first, versitygw exits and we try another.
	for attempt := 1; ; attempt++ {
		url, out, err := tryVersitygw(t, bin, freeAddr(t), root)
		if err == nil {
			return url
		}
		if attempt == 3 {
			t.Fatalf("versitygw: %v\n%s", err, out)
		}
		t.Logf("versitygw: %v; retrying\n%s", err, out)
	}
}

// tryVersitygw starts versitygw on addr and polls until it answers HTTP. On
// success the process is killed when the test ends; if it exits first, the
// error says so and out holds its output.
func tryVersitygw(t testing.TB, bin, addr, root string) (url string, out fmt.Stringer, err error) {
	t.Helper()
	cmd := exec.Command(bin, "--access", accessKey, "--secret", secretKey, "--region", region,
		"--port", addr, "--quiet", "posix", root)
	buf := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Logf("started: %s", strings.Join(cmd.Args, " "))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	url = "http://" + addr
	client := &http.Client{Timeout: time.Second}
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			return "", buf, fmt.Errorf("exited before answering: %v", err)
		case <-deadline:
			_ = cmd.Process.Kill()
			<-exited
			return "", buf, fmt.Errorf("no answer at %s within 30s", url)
		case <-tick.C:
		}
		// Any HTTP answer (403 for an anonymous request) means it is up.
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			break
		}
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("versitygw output:\n%s", buf)
		}
	})
	return url, buf, nil
}
