package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/internal/waitfor"
)

// runCLI runs the memcache command line in this process and returns what
// it printed.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := rootCommand()
	var out bytes.Buffer
	cmd.Writer, cmd.ErrWriter = &out, &out
	ctx, cancel := context.WithTimeout(context.Background(), testcluster.Wait)
	defer cancel()
	err := cmd.Run(ctx, append([]string{"memcache"}, args...))
	return out.String(), err
}

// peerRows returns the rows of a list-peers table, without its header.
func peerRows(out string) []string {
	var rows []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" && !strings.HasPrefix(l, "ID ") && !strings.HasPrefix(l, "removed ") {
			rows = append(rows, l)
		}
	}
	return rows
}

// TestOperatorRaftCommands runs `memcache operator raft list-peers` and
// `remove-peer` against a running three-replica group: the list names every
// replica and the leader; a wrong token is refused; a stopped replica is
// removed through a follower and the configuration shrinks; over https the
// manager's certificate is verified against --tls-ca.
func TestOperatorRaftCommands(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Managers: 3, Nodes: 1, AdminToken: testcluster.Token})
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(testcluster.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l := c.WaitLeader()
	var followers []*role.Manager
	for _, m := range c.Managers {
		if m != l {
			followers = append(followers, m)
		}
	}

	out, err := runCLI(t, "operator", "raft", "list-peers", "--addr", followers[0].URL(), "--admin-token", testcluster.Token)
	if err != nil {
		t.Fatalf("list-peers: %v\n%s", err, out)
	}
	rows := peerRows(out)
	if len(rows) != 3 || !strings.Contains(out, l.Name()+" ") || strings.Count(out, "leader") != 1 {
		t.Fatalf("list-peers printed:\n%s\nwant m1, m2, m3 as voters and %s as the one leader", out, l.Name())
	}
	for _, m := range c.Managers {
		if !strings.Contains(out, m.Name()+" ") {
			t.Errorf("list-peers does not list %s:\n%s", m.Name(), out)
		}
	}
	if strings.Count(out, "Voter") != 3 || !strings.Contains(out, l.Name()) {
		t.Errorf("list-peers printed:\n%s\nwant 3 voters", out)
	}

	if out, err := runCLI(t, "operator", "raft", "list-peers", "--addr", l.URL(), "--admin-token", "wrong"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("list-peers with a wrong token: %v\n%s\nwant a 401 error", err, out)
	}

	// A replica that is gone is removed through a follower.
	gone, via := followers[1], followers[0]
	c.StopManager(gone)
	waitfor.True(t, testcluster.Wait, gone.Name()+" out of the leader's gossip", func() bool {
		for _, m := range c.WaitLeader().Gossip().Members() {
			if m.Meta.ID == gone.Name() && m.State == gossip.StateAlive {
				return false
			}
		}
		return true
	})
	out, err = runCLI(t, "operator", "raft", "remove-peer", "--addr", via.URL(), "--admin-token-file", tokenFile, "--id", gone.Name())
	if err != nil {
		t.Fatalf("remove-peer: %v\n%s", err, out)
	}
	if rows := peerRows(out); !strings.Contains(out, "removed "+gone.Name()) || len(rows) != 2 {
		t.Errorf("remove-peer printed:\n%s\nwant %s removed and two peers left", out, gone.Name())
	}
	out, err = runCLI(t, "operator", "raft", "list-peers", "--addr", via.URL(), "--admin-token-file", tokenFile)
	if err != nil || len(peerRows(out)) != 2 || strings.Contains(out, gone.Name()+" ") {
		t.Errorf("list-peers after the removal: %v\n%s\nwant the two running replicas", err, out)
	}
	if out, err := runCLI(t, "operator", "raft", "remove-peer", "--addr", via.URL(), "--admin-token", testcluster.Token, "--id", "nobody"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("remove-peer of an unknown id: %v\n%s\nwant a 404 error", err, out)
	}

	// Over https: the certificate is checked against --tls-ca.
	target, err := url.Parse(via.URL())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(target))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI(t, "operator", "raft", "list-peers", "--addr", srv.URL, "--admin-token", testcluster.Token, "--tls-ca", caFile)
	if err != nil || len(peerRows(out)) != 2 {
		t.Errorf("list-peers over https with --tls-ca: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "operator", "raft", "list-peers", "--addr", srv.URL, "--admin-token", testcluster.Token); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("list-peers over https without --tls-ca: %v\n%s\nwant a certificate error", err, out)
	}
}
