// Package stall provides, for tests, a peer that stands for a paused
// (SIGSTOP'd) process: a real TCP listener that accepts connections and
// never reads from or answers them.
package stall

import (
	"net"
	"sync"
	"testing"
)

// Listen listens on addr ("127.0.0.1:0" for any free port) and holds every
// connection open without answering, until the test ends. It returns the
// address it listens on.
func Listen(t testing.TB, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("stall: listening on %s: %v", addr, err)
	}
	var (
		mu    sync.Mutex // guards conns
		conns []net.Conn
		done  = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}
