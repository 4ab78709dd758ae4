package role

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"

	"github.com/memcache/memcache/pki"
)

// Timeouts bounds what one HTTP connection may hold on a role's listeners,
// so a client that is slow, silent or gone costs a descriptor and a
// goroutine for a bounded time only. The zero value is the defaults.
//
// The other listeners have their own bounds: Raft's TLS stream layer
// (cluster/stream.go) drops a peer that has not completed its handshake in
// 10 s; memberlist sets a deadline of its TCPTimeout (10 s with the LAN
// defaults, 1 s with gossip's fast test timings) on every inbound stream
// before reading it, and its UDP side holds no connection.
type Timeouts struct {
	// ReadHeader bounds the TLS handshake and the reading of a request's
	// header, from the accept (on a kept-alive connection, from the next
	// request's first bytes): trickling bytes does not extend it. If zero,
	// 10 s.
	ReadHeader time.Duration
	// Read bounds the reading of a whole request, body included: the
	// largest upload must fit in it at the slowest rate a client may
	// have. It ends with the body (net/http lifts the read deadline then),
	// so it does not bound a handler's run. If zero, 60 s.
	Read time.Duration
	// Write bounds the answer to a request, from the end of its header:
	// the handler's work and the response. Long polls (the pool watch)
	// extend their own. If zero, 2 min (above the 90 s an admin write may
	// wait for nodes).
	Write time.Duration
	// Idle bounds the wait for the next request on a kept-alive
	// connection. If zero, 2 min.
	Idle time.Duration
	// MaxConns bounds the connections a public listener holds at once;
	// callers beyond it wait in the kernel's accept queue until one
	// closes. Cluster listeners are not bounded (only cluster members pass
	// their TLS handshake, and their pools are small). If zero, 4096;
	// negative, unbounded.
	MaxConns int
}

// Default timeouts and bounds (see Timeouts).
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 60 * time.Second
	DefaultWriteTimeout      = 2 * time.Minute
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultMaxConns          = 4096
	// maxHeaderBytes bounds a request's header.
	maxHeaderBytes = 64 << 10
)

// withDefaults fills in the zero fields.
func (t Timeouts) withDefaults() Timeouts {
	set := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	set(&t.ReadHeader, DefaultReadHeaderTimeout)
	set(&t.Read, DefaultReadTimeout)
	set(&t.Write, DefaultWriteTimeout)
	set(&t.Idle, DefaultIdleTimeout)
	if t.MaxConns == 0 {
		t.MaxConns = DefaultMaxConns
	}
	return t
}

// listenCluster opens a cluster listener on addr: with t, only peers with
// a certificate of the cluster CA complete a handshake (mutual TLS). It
// returns the listener and the base URL others reach it by: advertise, or
// the listener's address with the scheme the listener speaks.
func listenCluster(what, addr, advertise string, t *pki.TLS) (net.Listener, string, error) {
	ln, url, err := listen(what, addr, advertise, pki.Scheme(t))
	if err != nil {
		return nil, "", err
	}
	return pki.Listen(ln, t), url, nil
}

// listenPublic opens a public listener on addr, serving TLS with cfg if
// cfg is set (no client certificate asked). It holds at most maxConns
// connections at once (unbounded if maxConns <= 0): a flood of clients
// queues in the kernel instead of exhausting the process's descriptors.
func listenPublic(what, addr, advertise string, cfg *tls.Config, maxConns int) (net.Listener, string, error) {
	scheme := "http"
	if cfg != nil {
		scheme = "https"
	}
	ln, url, err := listen(what, addr, advertise, scheme)
	if err != nil {
		return nil, "", err
	}
	if maxConns > 0 {
		ln = netutil.LimitListener(ln, maxConns)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	return ln, url, nil
}

func listen(what, addr, advertise, scheme string) (net.Listener, string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("%s: listen on %s: %w", what, addr, err)
	}
	if advertise != "" {
		return ln, advertise, nil
	}
	a := ln.Addr().(*net.TCPAddr)
	if a.IP.IsUnspecified() {
		ln.Close()
		return nil, "", fmt.Errorf("%s: %s listens on every interface: give the address others reach it by (its advertise flag)", what, addr)
	}
	return ln, scheme + "://" + a.String(), nil
}

// newServer is an HTTP server with the timeouts every listener has (t,
// whose zero fields take the defaults): a client that sends its header or
// body slowly, reads its answer slowly, or holds an idle connection is
// dropped; MaxHeaderBytes bounds the header. Its own errors (refused TLS
// handshakes among them: scanners, health checks) go to log at debug level.
func newServer(h http.Handler, t Timeouts, log *slog.Logger) *http.Server {
	t = t.withDefaults()
	return &http.Server{Handler: h,
		ReadHeaderTimeout: t.ReadHeader, ReadTimeout: t.Read, WriteTimeout: t.Write, IdleTimeout: t.Idle,
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
}
