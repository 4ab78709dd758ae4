package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/pki"
)

func tlsCommand() *cli.Command {
	return &cli.Command{
		Name:  "tls",
		Usage: "make the cluster's certificate authority and certificates",
		Description: "Every member of a cluster talks mutual TLS with a certificate signed by the\n" +
			"cluster CA that names its role and the addresses peers reach it by:\n\n" +
			"  memcache tls ca create --dir tls\n" +
			"  memcache tls cert create --dir tls --role manager --host 192.168.56.11 --name m1\n\n" +
			"then run the member with --tls-ca tls/ca.pem --tls-cert tls/m1.pem --tls-key tls/m1-key.pem.\n" +
			"Keep ca-key.pem off the cluster's hosts.",
		Commands: []*cli.Command{
			{
				Name:  "ca",
				Usage: "the certificate authority",
				Commands: []*cli.Command{{
					Name:  "create",
					Usage: "make a CA key and certificate: DIR/ca.pem and DIR/ca-key.pem (ECDSA P-256)",
					Flags: []cli.Flag{
						&cli.StringFlag{Name: "dir", Value: ".", Usage: "directory to write into"},
						&cli.IntFlag{Name: "days", Value: 3650, Usage: "validity in days"},
					},
					Action: func(_ context.Context, cmd *cli.Command) error {
						if cmd.Int("days") < 1 {
							return fmt.Errorf("--days %d: want at least 1", cmd.Int("days"))
						}
						if err := pki.CreateCA(cmd.String("dir"), time.Duration(cmd.Int("days"))*24*time.Hour); err != nil {
							return err
						}
						fmt.Fprintf(cmd.Root().Writer, "wrote %s/%s and %s/%s\n", cmd.String("dir"), pki.CAFile, cmd.String("dir"), pki.CAKeyFile)
						return nil
					},
				}},
			},
			{
				Name:  "cert",
				Usage: "member certificates",
				Commands: []*cli.Command{{
					Name:  "create",
					Usage: "make a certificate signed by the CA in --dir: DIR/NAME.pem and DIR/NAME-key.pem",
					Flags: []cli.Flag{
						&cli.StringFlag{Name: "dir", Value: ".", Usage: "directory holding ca.pem and ca-key.pem; the certificate is written here"},
						&cli.StringFlag{Name: "role", Required: true, Usage: "manager, node, frontend or client (Raft admits only managers)"},
						&cli.StringSliceFlag{Name: "host", Usage: "IP address or DNS name peers reach the member by; repeat for each"},
						&cli.StringFlag{Name: "name", Usage: "file name stem (default: the role)"},
						&cli.IntFlag{Name: "days", Value: 365, Usage: "validity in days"},
					},
					Action: func(_ context.Context, cmd *cli.Command) error {
						if cmd.Int("days") < 1 {
							return fmt.Errorf("--days %d: want at least 1", cmd.Int("days"))
						}
						req := pki.CertRequest{Name: cmd.String("name"), Role: pki.Role(cmd.String("role")),
							Hosts: cmd.StringSlice("host"), Validity: time.Duration(cmd.Int("days")) * 24 * time.Hour}
						if err := pki.CreateCert(cmd.String("dir"), req); err != nil {
							return err
						}
						name := req.Name
						if name == "" {
							name = string(req.Role)
						}
						cert, key := pki.CertFiles(cmd.String("dir"), name)
						fmt.Fprintf(cmd.Root().Writer, "wrote %s and %s\n", cert, key)
						return nil
					},
				}},
			},
		},
	}
}

// clusterTLSFlags are the flags of a member's mutual TLS.
func clusterTLSFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("tls-ca", "", "cluster CA certificate(s), PEM; with --tls-cert and --tls-key, all cluster traffic is mutual TLS"),
		stringFlag("tls-cert", "", "this member's certificate, signed by the cluster CA (memcache tls cert create)"),
		stringFlag("tls-key", "", "this member's private key"),
		&cli.BoolFlag{Name: "insecure", Usage: "run without TLS: cluster traffic in clear text, and Raft open to anyone who reaches it (development only)",
			Sources: cli.EnvVars(envName("insecure"))},
	}
}

// errNoTLS is returned by a member started with neither TLS nor --insecure.
var errNoTLS = errors.New("no cluster TLS: give --tls-ca, --tls-cert and --tls-key (see `memcache tls --help`), or --insecure to run without it")

// clusterTLS loads the member's mutual TLS, or returns nil for --insecure.
func clusterTLS(cmd *cli.Command) (*pki.TLS, error) {
	ca, cert, key := cmd.String("tls-ca"), cmd.String("tls-cert"), cmd.String("tls-key")
	if ca == "" && cert == "" && key == "" {
		if cmd.Bool("insecure") {
			return nil, nil
		}
		return nil, errNoTLS
	}
	if cmd.Bool("insecure") {
		return nil, errors.New("--insecure and --tls-* are both set; give one")
	}
	return pki.Load(ca, cert, key)
}

// publicTLSFlags are the flags of TLS on a public listener.
func publicTLSFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("public-tls-cert", "", "certificate for the public listener (--http-addr), PEM; with --public-tls-key it serves https"),
		stringFlag("public-tls-key", "", "private key of --public-tls-cert"),
	}
}

// publicTLS returns the public listener's TLS configuration, or nil.
func publicTLS(cmd *cli.Command) (*tls.Config, error) {
	cert, key := cmd.String("public-tls-cert"), cmd.String("public-tls-key")
	if cert == "" && key == "" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("--public-tls-cert/--public-tls-key: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}, nil
}

// trustedProxies parses --trusted-proxies.
func trustedProxies(cmd *cli.Command) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range cmd.StringSlice("trusted-proxies") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("--trusted-proxies %q: %w", s, err)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--trusted-proxies %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// tlsEnv passes a member's TLS files to a child process (the local
// provisioner's nodes) through the environment.
func tlsEnv(cmd *cli.Command) []string {
	if cmd.String("tls-ca") == "" {
		return []string{envName("insecure") + "=true"}
	}
	return []string{envName("tls-ca") + "=" + cmd.String("tls-ca"), envName("tls-cert") + "=" + cmd.String("tls-cert"),
		envName("tls-key") + "=" + cmd.String("tls-key")}
}
