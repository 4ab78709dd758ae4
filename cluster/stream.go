package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/pki"
)

// handshakeTimeout bounds a Raft peer's TLS handshake.
const handshakeTimeout = 10 * time.Second

// tlsStream is Raft's stream layer over mutual TLS: it hands Raft only
// connections whose handshake proved a manager certificate signed by the
// cluster CA, so not one Raft message is read from anyone else, and dials
// peers presenting this replica's certificate and requiring theirs to be a
// manager's.
//
// Handshakes run in their own goroutines, so a peer that never finishes
// one does not hold up the others; Close stops accepting and waits for
// them.
type tlsStream struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	log       *slog.Logger

	conns  chan net.Conn
	stop   chan struct{}
	wg     sync.WaitGroup
	closed sync.Once
}

// newTLSStream listens on bind for Raft over mutual TLS. advertise is the
// address peers dial; if nil, the listener's, which must then not be an
// unspecified address (0.0.0.0, ::).
func newTLSStream(bind string, advertise net.Addr, t *pki.TLS, log *slog.Logger) (*tlsStream, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	if a, ok := advertise.(*net.TCPAddr); !ok || a.IP == nil || a.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft advertise address %s is not one peers can dial: set the advertise address", advertise)
	}
	s := &tlsStream{ln: ln, advertise: advertise, log: log,
		server: t.ServerConfig(pki.RoleManager), client: t.ClientConfig(pki.RoleManager),
		conns: make(chan net.Conn), stop: make(chan struct{})}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *tlsStream) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.stop:
				return
			default:
			}
			// A temporary failure (out of descriptors): back off as
			// net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("raft accept failed", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-s.stop:
				return
			}
			continue
		}
		delay = 0
		s.wg.Add(1)
		go s.handshake(raw)
	}
}

// handshake admits raw if it proves a manager certificate in time.
func (s *tlsStream) handshake(raw net.Conn) {
	defer s.wg.Done()
	conn := tls.Server(raw, s.server)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	go func() { // a Close during the handshake ends it
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := conn.HandshakeContext(ctx); err != nil {
		s.log.Warn("raft connection refused: no manager certificate of this cluster", "remote", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	select {
	case s.conns <- conn:
	case <-s.stop:
		conn.Close()
	}
}

// Accept returns the next authenticated connection.
func (s *tlsStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.stop:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and waits for the handshakes in progress.
func (s *tlsStream) Close() error {
	var err error
	s.closed.Do(func() {
		close(s.stop)
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

// Addr is the advertised address.
func (s *tlsStream) Addr() net.Addr { return s.advertise }

// Dial connects to a peer, verifying that it is a manager of this cluster
// at the address dialled.
func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, err
	}
	cfg := s.client.Clone()
	cfg.ServerName = host
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		var rec tls.RecordHeaderError
		if errors.As(err, &rec) {
			err = fmt.Errorf("%w (is the peer serving Raft without TLS?)", err)
		}
		return nil, err
	}
	return c, nil
}
