package role_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/internal/waitfor"
)

// raiseFileLimit lifts RLIMIT_NOFILE to at least want (both ends of every
// connection live in this process), or skips the test if it cannot.
func raiseFileLimit(t *testing.T, want uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("cannot read RLIMIT_NOFILE: %v", err)
	}
	if lim.Cur >= want {
		return
	}
	if lim.Max < want {
		t.Skipf("RLIMIT_NOFILE hard limit %d is under the %d descriptors this test needs", lim.Max, want)
	}
	old := lim
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("cannot raise RLIMIT_NOFILE to %d: %v", want, err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// testPNG is a small valid image.
func testPNG(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, image.NewGray(image.Rect(0, 0, 8, 8))); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func upload(t *testing.T, base, key string, data []byte) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", key)
	fw, _ := mw.CreateFormFile("file", "x.png")
	fw.Write(data)
	mw.Close()
	resp, err := http.Post(base+"/api/upload", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
}

// getOK fetches url and fails unless the answer is 200 with want.
func getOK(client *http.Client, url string, want []byte) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, want) {
		return fmt.Errorf("GET %s: %d, %d bytes, want 200 and %d bytes", url, resp.StatusCode, len(b), len(want))
	}
	return nil
}

// TestFrontendDropsSlowClients: 2,000 connections to a real frontend's
// public listener that send nothing, or trickle a header one byte at a
// time, do not stop ordinary clients from reading an image while they are
// open, and the server closes every one of them once its header timeout
// has passed (trickling does not extend it).
func TestFrontendDropsSlowClients(t *testing.T) {
	const slow = 2000
	raiseFileLimit(t, 2*slow+2048)
	c := testcluster.Start(t, testcluster.Options{Managers: 1, Nodes: 1})
	// A short header timeout, and a read timeout far beyond the wait below,
	// so that only the header timeout can close the slow connections in time.
	fe := c.StartFrontend(role.FrontendConfig{Timeouts: role.Timeouts{ReadHeader: 2 * time.Second, Read: 10 * time.Minute, Idle: 10 * time.Minute}})
	base := fe.URL()
	waitfor.True(t, testcluster.StartWait, "the frontend to be ready", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	img := testPNG(t)
	upload(t, base, "slow/clients", img)
	imageURL := base + "/images/slow/clients"

	addr := fe.URL()[len("http://"):]
	var (
		closed atomic.Int64 // slow connections the server has closed
		wg     sync.WaitGroup
		conns  []net.Conn
	)
	stop := make(chan struct{})
	t.Cleanup(func() {
		close(stop)
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	})
	for i := range slow {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("slow connection %d: %v", i, err)
		}
		conns = append(conns, conn)
		if i%2 == 1 { // half start a header they never finish
			if _, err := io.WriteString(conn, "GET /images/slow/clients HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
				t.Fatalf("slow connection %d: %v", i, err)
			}
		}
		wg.Go(func() {
			// The server closes the connection (with or without a 408
			// first): Read ends with an error.
			buf := make([]byte, 512)
			for {
				if _, err := conn.Read(buf); err != nil {
					select {
					case <-stop: // closed by the test
					default:
						closed.Add(1)
					}
					return
				}
			}
		})
	}
	// The header senders trickle one more byte every 200 ms.
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for i := 1; i < len(conns); i += 2 {
				conns[i].SetWriteDeadline(time.Now().Add(time.Second))
				conns[i].Write([]byte("a"))
			}
		}
	})

	// Ordinary clients are served while the slow connections are open.
	var (
		cwg  sync.WaitGroup
		errs = make(chan error, 8*25)
	)
	for range 8 {
		cwg.Go(func() {
			client := &http.Client{Timeout: testcluster.Wait}
			defer client.CloseIdleConnections()
			for range 25 {
				if err := getOK(client, imageURL, img); err != nil {
					errs <- err
				}
			}
		})
	}
	cwg.Wait()
	close(errs)
	var failed []error
	for err := range errs {
		failed = append(failed, err)
	}
	if len(failed) > 0 {
		t.Fatalf("%d of 200 ordinary GETs failed with %d slow connections open: %v", len(failed), slow, errors.Join(failed...))
	}

	waitfor.True(t, 3*testcluster.Wait/2, fmt.Sprintf("the server to close all %d slow connections", slow), func() bool {
		return closed.Load() == slow
	})
	// And it still serves.
	if err := getOK(http.DefaultClient, imageURL, img); err != nil {
		t.Fatal(err)
	}
}

// TestFrontendBoundsConnections: with MaxConns connections held open on
// the public listener, one more client waits in the accept queue; it is
// served once a held connection closes.
func TestFrontendBoundsConnections(t *testing.T) {
	const maxConns = 20
	c := testcluster.Start(t, testcluster.Options{Managers: 1, Nodes: 1})
	fe := c.StartFrontend(role.FrontendConfig{Timeouts: role.Timeouts{MaxConns: maxConns, ReadHeader: 10 * time.Minute, Read: 10 * time.Minute}})
	base := fe.URL()
	client := &http.Client{Timeout: testcluster.Wait}
	if err := getOK(client, base+"/healthz", []byte("ok\n")); err != nil {
		t.Fatal(err)
	}
	client.CloseIdleConnections()

	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for i := range maxConns {
		conn, err := net.Dial("tcp", base[len("http://"):])
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		held = append(held, conn)
	}
	// Each held connection is accepted (the listener counts it) before the
	// extra one: the extra one finds every slot taken. Its request
	// succeeds only after a slot frees.
	short := &http.Client{Timeout: 3 * time.Second}
	if err := getOK(short, base+"/healthz", []byte("ok\n")); err == nil {
		t.Fatalf("a request was served with %d connections held, MaxConns %d", maxConns, maxConns)
	}
	short.CloseIdleConnections()
	held[0].Close()
	held = held[1:]
	if err := getOK(client, base+"/healthz", []byte("ok\n")); err != nil {
		t.Fatalf("after a held connection closed: %v", err)
	}
}

// TestWatchOutlivesServerTimeouts: a watch that blocks longer than the
// cluster listener's read and write timeouts still gets its answer: the
// watch extends its own write deadline (and net/http does not let the read
// timeout cut a request that has been read).
func TestWatchOutlivesServerTimeouts(t *testing.T) {
	m, err := role.StartManager(context.Background(), role.ManagerConfig{Name: "m1", DataDir: t.TempDir(), BootstrapExpect: 1,
		Timeouts: role.Timeouts{Read: time.Second, Write: time.Second}}, testcluster.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testcluster.Wait)
		defer cancel()
		m.Close(ctx)
	})
	waitfor.True(t, testcluster.StartWait, "a leader", m.Cluster().IsLeader)
	watch := func(query string) (*http.Response, []byte, error) {
		resp, err := http.Get(m.ClusterURL() + "/v1/pool" + query)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}
	// The first view's index; while the pool is empty it is 0, and even
	// this call blocks its default wait (4 s).
	var index string
	waitfor.True(t, testcluster.Wait, "the watch to answer", func() bool {
		resp, _, err := watch("")
		if err != nil || resp.StatusCode != http.StatusOK {
			return false
		}
		index = resp.Header.Get(pool.HeaderIndex)
		return true
	})
	// Nothing changes: the watch blocks its full wait, three times the
	// server's timeouts, then answers the current view.
	start := time.Now()
	resp, body, err := watch("?index=" + index + "&wait=3s")
	if err != nil {
		t.Fatalf("watch blocking past the server's timeouts: %v (after %v)", err, time.Since(start))
	}
	var v pool.View
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &v) != nil {
		t.Fatalf("watch blocking past the server's timeouts: %d %q, want 200 and a view", resp.StatusCode, body)
	}
	if got := resp.Header.Get(pool.HeaderIndex); got != index {
		t.Errorf("index %s, want the unchanged %s", got, index)
	}
}
