// Command driver is the load generator of bench/run.sh: it measures
// memcache's read paths beside nginx and memcached on the same bytes, in
// one run, and prints a markdown table with the ratio of each to the
// baseline (nginx).
//
//	driver run -config bench.json [-round 3s -rounds 5 -clients 16]
//	driver ports -n 3       free TCP ports on 127.0.0.1, one a line
//	driver portbase         a --port-base for `memcache up` whose ports are all free
//	driver owner -pool URL -ca ... -cert ... -key ... -secret-file ... KEY
//	                        the base URL of KEY's owner node, from a manager's pool view
//	driver mcset -addr HOST:PORT [-tls -ca ...] KEY FILE
//	                        store FILE's bytes under KEY in memcached
//
// The config (JSON, see Config) names the sizes (each an image file) and
// the targets (HTTP URLs or memcached servers) to measure.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/memcache/memcache/region"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: driver run|ports|portbase|owner|mcset [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:])
	case "ports":
		err = cmdPorts(os.Args[2:])
	case "portbase":
		err = cmdPortBase()
	case "owner":
		err = cmdOwner(os.Args[2:])
	case "mcset":
		err = cmdMcSet(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: want run, ports, portbase, owner or mcset", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "driver:", err)
		os.Exit(1)
	}
}

func cmdRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	config := fs.String("config", "", "the run's JSON config (required)")
	var o Options
	fs.DurationVar(&o.Round, "round", 3*time.Second, "length of one round")
	fs.IntVar(&o.Rounds, "rounds", 5, "rounds per target and size (the median is reported)")
	fs.IntVar(&o.Clients, "clients", 16, "closed-loop clients, each on its own kept-alive connection")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "unrecorded round per target and size before the first")
	fs.Parse(args)
	if *config == "" {
		return errors.New("run: -config is required")
	}
	b, err := os.ReadFile(*config)
	if err != nil {
		return err
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s: %w", *config, err)
	}
	o.Log = os.Stderr
	res, err := Run(cfg, o)
	if err != nil {
		return err
	}
	fmt.Print(Report(cfg, o, res))
	if n := res.Errors(); n > 0 {
		return fmt.Errorf("%d answers were errors or wrong bytes: the figures above are not valid", n)
	}
	return nil
}

// freePorts returns n distinct TCP ports free on 127.0.0.1 (held open
// together while chosen, then released).
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func cmdPorts(args []string) error {
	fs := flag.NewFlagSet("ports", flag.ExitOnError)
	n := fs.Int("n", 1, "how many ports")
	fs.Parse(args)
	ports, err := freePorts(*n)
	if err != nil {
		return err
	}
	for _, p := range ports {
		fmt.Println(p)
	}
	return nil
}

// upOffsets are the ports `memcache up --port-base B` listens on, as
// offsets from B (cmd_up.go): managers' HTTP, Raft, gossip (TCP and UDP,
// the frontend's too) and cluster listeners.
var upOffsets = []int{1, 2, 3, 101, 102, 103, 201, 202, 203, 204, 301, 302, 303, 304}

// cmdPortBase prints a port base in 20000..59000 whose up ports are all
// free on 127.0.0.1, for TCP and UDP.
func cmdPortBase() error {
	for range 200 {
		base := 20000 + int(time.Now().UnixNano()%390)*100
		if portsFree(base) {
			fmt.Println(base)
			return nil
		}
	}
	return errors.New("portbase: no free port base found")
}

func portsFree(base int) bool {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, off := range upOffsets {
		addr := fmt.Sprintf("127.0.0.1:%d", base+off)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		closers = append(closers, l)
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		closers = append(closers, u)
	}
	return true
}

// cmdOwner prints the base URL of the node that owns a key's region, as
// the managers' pool view (GET /v1/pool on a cluster listener: mutual TLS
// and the cluster secret) says.
func cmdOwner(args []string) error {
	fs := flag.NewFlagSet("owner", flag.ExitOnError)
	poolURL := fs.String("pool", "", "a manager's pool view URL, https://HOST:PORT/v1/pool")
	ca := fs.String("ca", "", "cluster CA (PEM)")
	cert := fs.String("cert", "", "a client certificate of the cluster CA (memcache tls cert create --role client)")
	key := fs.String("key", "", "its private key")
	secretFile := fs.String("secret-file", "", "file holding the cluster secret")
	fs.Parse(args)
	if fs.NArg() != 1 || *poolURL == "" {
		return errors.New("owner: want -pool URL and one key")
	}
	tc, err := tlsConfig(*ca, *cert, *key)
	if err != nil {
		return err
	}
	secret, err := os.ReadFile(*secretFile)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodGet, *poolURL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Memcache-Secret", strings.TrimSpace(string(secret)))
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("owner: %s: %s %s", *poolURL, resp.Status, b)
	}
	var view struct {
		Members []struct {
			ID   string `json:"id"`
			HTTP string `json:"http"`
		} `json:"members"`
		Regions region.Map `json:"regions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&view); err != nil {
		return fmt.Errorf("owner: pool view: %w", err)
	}
	id := view.Regions[region.Of(fs.Arg(0))]
	for _, m := range view.Members {
		if m.ID == id && id != "" {
			fmt.Println(m.HTTP)
			return nil
		}
	}
	return fmt.Errorf("owner: no member owns region %d of %q", region.Of(fs.Arg(0)), fs.Arg(0))
}

// tlsConfig trusts the CA in caFile (if set) and presents the client
// certificate in certFile/keyFile (if set).
func tlsConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", caFile)
		}
	}
	if certFile != "" || keyFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// cmdMcSet stores a file's bytes under a key in memcached.
func cmdMcSet(args []string) error {
	fs := flag.NewFlagSet("mcset", flag.ExitOnError)
	addr := fs.String("addr", "", "memcached host:port")
	useTLS := fs.Bool("tls", false, "connect over TLS")
	ca := fs.String("ca", "", "CA (PEM) that signed memcached's certificate, with -tls")
	fs.Parse(args)
	if fs.NArg() != 2 || *addr == "" {
		return errors.New("mcset: want -addr and KEY FILE")
	}
	data, err := os.ReadFile(fs.Arg(1))
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", *addr, 10*time.Second)
	if err != nil {
		return err
	}
	if *useTLS {
		tc, err := tlsConfig(*ca, "", "")
		if err != nil {
			c.Close()
			return err
		}
		host, _, _ := net.SplitHostPort(*addr)
		tc.ServerName = host
		c = tls.Client(c, tc)
	}
	defer c.Close()
	return mcSet(c, fs.Arg(0), data)
}

// mcSet stores data under key over the memcached text protocol on c.
func mcSet(c net.Conn, key string, data []byte) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "set %s 0 0 %d\r\n%s\r\n", key, len(data), data); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "STORED\r\n" {
		return fmt.Errorf("memcached answered %q to set %s", strings.TrimSpace(line), key)
	}
	return nil
}
