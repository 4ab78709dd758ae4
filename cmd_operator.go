package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/cluster"
)

func operatorFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("addr", "http://127.0.0.1:7200", "base URL of a manager's public HTTP listener"),
		stringFlag("admin-token", "", "the managers' admin token"),
		secretFileFlag("admin-token"),
		stringFlag("tls-ca", "", "PEM file of the CA that signed an https manager's certificate (default: the system's roots)"),
		&cli.DurationFlag{Name: "timeout", Value: 30 * time.Second, Usage: "deadline of each call to the manager", Sources: cli.EnvVars(envName("timeout"))},
	}
}

func operatorCommand() *cli.Command {
	return &cli.Command{
		Name:  "operator",
		Usage: "operate a running cluster",
		Commands: []*cli.Command{{
			Name:  "raft",
			Usage: "inspect and change the managers' Raft group",
			Commands: []*cli.Command{
				{
					Name:  "list-peers",
					Usage: "list the servers of the Raft configuration",
					Flags: append(operatorFlags(),
						&cli.BoolFlag{Name: "stale", Usage: "answer from the manager at --addr instead of the leader (when no leader is known)"}),
					Action: runListPeers,
				},
				{
					Name:  "remove-peer",
					Usage: "remove a server from the Raft configuration (a replica that is gone)",
					Description: "The leader refuses to remove itself, the last voter, or a manager alive in\n" +
						"gossip (it would add it straight back): stop the replica first. --force\n" +
						"removes a live one anyway; the leader leaves it out until it stops.",
					Flags: append(operatorFlags(),
						&cli.StringFlag{Name: "id", Usage: "the server's id (its manager --name)", Required: true},
						&cli.BoolFlag{Name: "force", Usage: "remove a manager even though it is alive in gossip"}),
					Action: runRemovePeer,
				},
			},
		}},
	}
}

// operatorClient turns the operator flags into a client.
func operatorClient(cmd *cli.Command) (*cluster.OperatorClient, error) {
	token, err := secret(cmd, "admin-token")
	if err != nil {
		return nil, err
	}
	client := &http.Client{}
	if file := cmd.String("tls-ca"); file != "" {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", file)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		client.Transport = tr
	}
	return &cluster.OperatorClient{Addr: cmd.String("addr"), Token: token, HTTP: client, Timeout: cmd.Duration("timeout")}, nil
}

func runListPeers(ctx context.Context, cmd *cli.Command) error {
	op, err := operatorClient(cmd)
	if err != nil {
		return err
	}
	peers, err := op.Peers(ctx, cmd.Bool("stale"))
	if err != nil {
		return operatorErr(err)
	}
	printPeers(cmd, peers)
	return nil
}

func runRemovePeer(ctx context.Context, cmd *cli.Command) error {
	op, err := operatorClient(cmd)
	if err != nil {
		return err
	}
	id := cmd.String("id")
	peers, err := op.RemovePeer(ctx, id, cmd.Bool("force"))
	if err != nil {
		return operatorErr(err)
	}
	fmt.Fprintf(cmd.Root().Writer, "removed %s; the configuration is now:\n", id)
	printPeers(cmd, peers)
	return nil
}

func printPeers(cmd *cli.Command, peers []cluster.RaftPeer) {
	tw := tabwriter.NewWriter(cmd.Root().Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tSTATE")
	for _, p := range peers {
		state := "follower"
		if p.Leader {
			state = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.ID, p.Address, p.Suffrage, state)
	}
	tw.Flush()
}

// operatorErr adds a hint to the answers an operator can act on.
func operatorErr(err error) error {
	var oe *cluster.OperatorError
	if errors.As(err, &oe) && oe.Status == http.StatusUnauthorized {
		return fmt.Errorf("%w (give the managers' --admin-token or --admin-token-file)", err)
	}
	return err
}
