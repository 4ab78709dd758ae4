package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/load"
)

func loadCommand() *cli.Command {
	return &cli.Command{
		Name:  "load",
		Usage: "generate load against a frontend",
		Description: "Uploads --keys images (unless --no-seed), then reads and writes them for\n" +
			"--duration: reads pick keys by a Zipf law (--skew > 1 concentrates them on a few\n" +
			"keys; 1 or less is uniform). Prints the rate, the hit rate the frontend reports,\n" +
			"latency percentiles (p50, p90, p99, p99.9, max) and errors every second, and a\n" +
			"summary at the end.\n\n" +
			"Without --rate, each worker sends its next request when the last is answered\n" +
			"(a closed loop) and the latency is the service time, send to answer. With\n" +
			"--rate R, requests are due every 1/R s whatever the answers (an open loop; a\n" +
			"stall makes the workers send the overdue requests when they are free), and the\n" +
			"latency printed is the response time from each request's due time, which counts\n" +
			"a stall for every request due during it; the service time is shown beside it,\n" +
			"and \"overdue\" counts the requests due but not yet sent. --concurrency bounds\n" +
			"the requests in flight: set it above the rate times the latency you expect.",
		Flags: []cli.Flag{
			stringFlag("frontend", "http://127.0.0.1:8080", "base URL of the frontend"),
			intFlag("keys", 100, "distinct keys"),
			stringFlag("prefix", "load-", "key prefix"),
			intFlag("image-kb", 50, "image size in KB"),
			&cli.FloatFlag{Name: "skew", Value: 1.2, Usage: "Zipf skew of reads (> 1); 1 or less reads keys uniformly", Sources: cli.EnvVars(envName("skew"))},
			&cli.FloatFlag{Name: "read-ratio", Value: 0.9, Usage: "fraction of requests that are reads", Sources: cli.EnvVars(envName("read-ratio"))},
			&cli.FloatFlag{Name: "rate", Value: 0, Usage: "requests per second on a fixed schedule; latency is measured from each request's due time (0: a closed loop, as fast as the workers go)", Sources: cli.EnvVars(envName("rate"))},
			intFlag("concurrency", 8, "concurrent workers"),
			&cli.DurationFlag{Name: "duration", Value: time.Minute, Usage: "how long to run after seeding", Sources: cli.EnvVars(envName("duration"))},
			&cli.BoolFlag{Name: "no-seed", Usage: "do not upload the keys first", Sources: cli.EnvVars(envName("no-seed"))},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg := load.Config{
				Frontend: cmd.String("frontend"), Keys: cmd.Int("keys"), Prefix: cmd.String("prefix"),
				ImageKB: cmd.Int("image-kb"), Skew: cmd.Float("skew"), ReadRatio: cmd.Float("read-ratio"),
				Rate: cmd.Float("rate"), Concurrency: cmd.Int("concurrency"), Duration: cmd.Duration("duration"),
				Seed: !cmd.Bool("no-seed"),
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			if cfg.Seed {
				fmt.Fprintf(os.Stderr, "seeding %d keys of %d KB at %s ...\n", cfg.Keys, cfg.ImageKB, cfg.Frontend)
			}
			if cfg.Rate > 0 {
				fmt.Printf("open loop at %g req/s: response time from each request's due time (counts stalls), service time from its send in brackets\n", cfg.Rate)
			} else {
				fmt.Println("closed loop: latency is the service time, from a request's send to its answer")
			}
			total, err := load.Run(ctx, cfg, func(s load.Stats) { fmt.Println(s) })
			if err != nil {
				return err
			}
			fmt.Printf("\nsummary: %s", total.Summary())
			return nil
		},
	}
}
