package role

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/memcache/memcache/pki"
)

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
// cfg is set (no client certificate asked).
func listenPublic(what, addr, advertise string, cfg *tls.Config) (net.Listener, string, error) {
	scheme := "http"
	if cfg != nil {
		scheme = "https"
	}
	ln, url, err := listen(what, addr, advertise, scheme)
	if err != nil {
		return nil, "", err
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

// newServer is an HTTP server with the timeouts every listener has: a
// client that sends its header slowly, or holds an idle connection, is
// dropped; MaxHeaderBytes bounds the header. Its own errors (refused TLS
// handshakes among them: scanners, health checks) go to log at debug level.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
}
