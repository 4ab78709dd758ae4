package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/pki"

	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/scaler"
)

func upCommand() *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "run the whole system on this machine: 3 manager replicas, the cache nodes and a frontend",
		Description: "Starts 3 manager replicas (Raft group, data under --data-dir), a local provisioner\n" +
			"that starts cache nodes as child processes, a pool of one node, and a frontend\n" +
			"(images in --data-dir/frontend/blobs, keys in SQLite); prints every address and the\n" +
			"admin token, and writes them as JSON to --info-file once the cluster is ready.\n" +
			"Ctrl-C stops everything. Restarting on the same --data-dir keeps the data, the\n" +
			"secrets and the pool config.",
		Flags: append([]cli.Flag{
			renamedStringFlag("data-dir", "./memcache-data", "directory for every replica's data, secrets and node logs", "data"),
			stringFlag("host", "127.0.0.1", "IP address every process listens on"),
			intFlag("port-base", 7200, "manager i (1..3) listens on HTTP port-base+i, Raft port-base+100+i, gossip port-base+200+i, cluster HTTP port-base+300+i; the frontend gossips on port-base+204 and takes cluster calls on port-base+304"),
			stringFlag("frontend-addr", "127.0.0.1:8080", "host:port of the frontend (pages and data API)"),
			&cli.IntFlag{Name: "near-cache-mb", Value: 64, Usage: "the frontend's near-cache in MB (0: off, every read asks the owner node)", Sources: cli.EnvVars(envName("near-cache-mb"))},
			stringFlag("info-file", "", "write the addresses as JSON here once ready"),
			&cli.DurationFlag{Name: "scaler-interval", Value: time.Minute, Usage: "how often the leader's auto-scaler reads the miss rate and decides (shorten it for a demo)", Sources: cli.EnvVars(envName("scaler-interval"))},
			&cli.DurationFlag{Name: "ready-timeout", Value: 60 * time.Second, Usage: "how long to wait for a leader and the first node", Sources: cli.EnvVars(envName("ready-timeout"))},
		}, listenerFlags()...),
		Action: runUp,
	}
}

// upInfo is the shape of --info-file.
type upInfo struct {
	Managers []string `json:"managers"`
	Frontend *string  `json:"frontend"`
	Token    *string  `json:"token"`
	// TLSDir holds the cluster CA and the certificates up made (ca.pem,
	// manager.pem, node.pem, frontend.pem and their keys).
	TLSDir string `json:"tls_dir"`
}

// upHosts are the names up's certificates are valid for: host, and the
// loopback names when host is a loopback address.
func upHosts(host string) []string {
	hosts := []string{host}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() || host == "localhost" {
		hosts = append(hosts, "127.0.0.1", "::1", "localhost")
	}
	return hosts
}

// readOrCreateSecret returns the secret kept in path, creating n random bytes
// (encoded with enc) the first time, so a restart reuses it.
func readOrCreateSecret(path string, n int, enc func([]byte) string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	b := make([]byte, n)
	rand.Read(b)
	s := enc(b)
	return s, os.WriteFile(path, []byte(s+"\n"), 0o600)
}

func runUp(ctx context.Context, cmd *cli.Command) error {
	if n := cmd.Int("near-cache-mb"); n < 0 {
		return fmt.Errorf("--near-cache-mb %d: want 0 (off) or more", n)
	}
	log, err := newLogger(cmd)
	if err != nil {
		return err
	}
	data, host, base := cmd.String("data-dir"), cmd.String("host"), cmd.Int("port-base")
	// The managers' and the frontend's listeners (the nodes keep the defaults).
	timeouts := listenerTimeouts(cmd)
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	secret, err := readOrCreateSecret(filepath.Join(data, "cluster-secret"), 24, hex.EncodeToString)
	if err != nil {
		return err
	}
	keyText, err := readOrCreateSecret(filepath.Join(data, "gossip-key"), 32, base64.StdEncoding.EncodeToString)
	if err != nil {
		return err
	}
	key, err := gossipKey(keyText)
	if err != nil {
		return err
	}
	token, err := readOrCreateSecret(filepath.Join(data, "admin-token"), 24, hex.EncodeToString)
	if err != nil {
		return err
	}
	// Mutual TLS between the processes, with a CA of this data directory's
	// own (DATA/tls), made on the first start.
	tlsDir := filepath.Join(data, "tls")
	if err := pki.Ensure(tlsDir, upHosts(host), pki.RoleManager, pki.RoleNode, pki.RoleFrontend); err != nil {
		return fmt.Errorf("up: certificates in %s: %w", tlsDir, err)
	}
	certs := map[pki.Role]*pki.TLS{}
	for _, r := range []pki.Role{pki.RoleManager, pki.RoleNode, pki.RoleFrontend} {
		if certs[r], err = pki.Dir(tlsDir, string(r)); err != nil {
			return fmt.Errorf("up: %w (remove %s to make new certificates)", err, tlsDir)
		}
	}
	nodeCert, nodeKey := pki.CertFiles(tlsDir, string(pki.RoleNode))

	const replicas = 3
	gossipAddrs := make([]string, replicas)
	for i := range replicas {
		gossipAddrs[i] = fmt.Sprintf("%s:%d", host, base+200+i+1)
	}

	// One local provisioner serves the three replicas: the nodes are children
	// of this process whichever replica leads.
	shared := role.NewSharedLocal(scaler.LocalConfig{
		Join: gossipAddrs, GlobalArgs: []string{"--log-level", "warn"}, Host: host,
		LogDir: filepath.Join(data, "logs"),
		Env: []string{envName("cluster-secret") + "=" + secret, envName("gossip-key") + "=" + keyText,
			envName("tls-ca") + "=" + filepath.Join(tlsDir, pki.CAFile), envName("tls-cert") + "=" + nodeCert, envName("tls-key") + "=" + nodeKey},
	}, log)

	var (
		managers []*role.Manager
		fe       *role.Frontend
	)
	stopAll := func() error {
		shutdown, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var errs []error
		if fe != nil {
			errs = append(errs, fe.Close(shutdown))
		}
		for i := len(managers) - 1; i >= 0; i-- {
			errs = append(errs, managers[i].Close(shutdown))
		}
		errs = append(errs, shared.Close())
		return errors.Join(errs...)
	}
	for i := range replicas {
		name := fmt.Sprintf("manager-%d", i+1)
		m, err := role.StartManager(ctx, role.ManagerConfig{
			Name: name, DataDir: filepath.Join(data, name),
			HTTPAddr:    fmt.Sprintf("%s:%d", host, base+i+1),
			RaftAddr:    fmt.Sprintf("%s:%d", host, base+100+i+1),
			ClusterAddr: fmt.Sprintf("%s:%d", host, base+300+i+1), TLS: certs[pki.RoleManager],
			Gossip:          gossip.Config{BindAddr: gossipAddrs[i], Join: gossipAddrs, SecretKey: key},
			BootstrapExpect: replicas, InitialNodes: 1, Secret: secret, AdminToken: token,
			// The nodes are this process's children: after a restart the
			// old ones are certainly gone, so replace them quickly.
			DeadGrace: 3 * time.Second, Timing: cluster.DefaultTiming(), ScalerInterval: cmd.Duration("scaler-interval"),
			Provisioner: shared.Provisioner(), Timeouts: timeouts,
		}, log.With("replica", name))
		if err != nil {
			stopAll()
			return err
		}
		managers = append(managers, m)
	}

	info := upInfo{Token: &token, TLSDir: tlsDir}
	var clusterURLs []string
	for _, m := range managers {
		info.Managers = append(info.Managers, m.URL())
		clusterURLs = append(clusterURLs, m.ClusterURL())
	}
	fe, err = role.StartFrontend(ctx, role.FrontendConfig{
		Name: "frontend", HTTPAddr: cmd.String("frontend-addr"),
		ClusterAddr: fmt.Sprintf("%s:%d", host, base+300+replicas+1), TLS: certs[pki.RoleFrontend],
		Gossip:   gossip.Config{BindAddr: fmt.Sprintf("%s:%d", host, base+200+replicas+1), Join: gossipAddrs, SecretKey: key},
		Managers: clusterURLs, Secret: secret,
		DB: filepath.Join(data, "frontend", "keys.db"), BlobDir: filepath.Join(data, "frontend", "blobs"),
		MaxUpload: 10 << 20, NearCacheMB: cmd.Int("near-cache-mb"), Timeouts: timeouts,
	}, log.With("id", "frontend"))
	if err != nil {
		stopAll()
		return err
	}
	feURL := fe.URL()
	info.Frontend = &feURL
	if err := waitReady(ctx, managers, cmd.Duration("ready-timeout")); err != nil {
		stopAll()
		return err
	}
	printTable(os.Stdout, managers, feURL, secret, token, tlsDir)
	if f := cmd.String("info-file"); f != "" {
		b, _ := json.MarshalIndent(info, "", "  ")
		if err := os.WriteFile(f, append(b, '\n'), 0o600); err != nil {
			stopAll()
			return err
		}
	}
	<-ctx.Done()
	log.Info("shutting down")
	return stopAll()
}

// waitReady waits until a leader is elected and the pool has nodes, all
// alive in gossip (after a restart, the old nodes must first be replaced).
func waitReady(ctx context.Context, managers []*role.Manager, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if poolReady(managers[0].Cluster()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("up: no leader and pool node after %v (see the logs above)", timeout)
		case <-tick.C:
		}
	}
}

func poolReady(c *cluster.Cluster) bool {
	if _, _, ok := c.Leader(); !ok {
		return false
	}
	alive := map[string]bool{}
	for _, m := range c.Gossip().Members() {
		alive[m.Meta.ID] = m.Meta.Role == gossip.RoleNode && m.State == gossip.StateAlive
	}
	members := c.State().Members
	for _, m := range members {
		if !alive[m.ID] {
			return false
		}
	}
	return len(members) > 0
}

func printTable(w io.Writer, managers []*role.Manager, frontendURL, secret, token, tlsDir string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tNAME\tHTTP\tUI\tRAFT\tGOSSIP\tSTATE")
	for _, m := range managers {
		c := m.Cluster()
		state := "follower"
		if c.IsLeader() {
			state = "leader"
		}
		fmt.Fprintf(tw, "manager\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name(), m.URL(), m.URL()+"/ui", c.RaftAddr(), c.Gossip().Addr(), state)
	}
	st := managers[0].Cluster().State()
	for _, n := range st.Members {
		fmt.Fprintf(tw, "node\t%s\t%s\t-\t-\t-\tregions %v\n", n.ID, n.HTTP, st.Regions.Owned(n.ID))
	}
	fmt.Fprintf(tw, "frontend\tfrontend\t%s\t-\t-\t-\t-\n", frontendURL)
	tw.Flush()
	fmt.Fprintf(w, "\nopen:           %s\nadmin token:    %s\ncluster secret: %s\ncluster TLS:    %s (ca.pem; a certificate per role)\n"+
		"raft status:    curl -H 'Authorization: Bearer %s' %s/raft/status\n",
		frontendURL, token, secret, tlsDir, token, managers[0].URL())
}
