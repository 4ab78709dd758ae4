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
			"latency and errors every second, and a summary at the end.",
		Flags: []cli.Flag{
			stringFlag("frontend", "http://127.0.0.1:8080", "base URL of the frontend"),
			intFlag("keys", 100, "distinct keys"),
			stringFlag("prefix", "load-", "key prefix"),
			intFlag("image-kb", 50, "image size in KB"),
			&cli.FloatFlag{Name: "skew", Value: 1.2, Usage: "Zipf skew of reads (> 1); 1 or less reads keys uniformly", Sources: cli.EnvVars(envName("skew"))},
			&cli.FloatFlag{Name: "read-ratio", Value: 0.9, Usage: "fraction of requests that are reads", Sources: cli.EnvVars(envName("read-ratio"))},
			&cli.FloatFlag{Name: "rate", Value: 0, Usage: "target requests per second (0: as fast as the workers go)", Sources: cli.EnvVars(envName("rate"))},
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
			total, err := load.Run(ctx, cfg, func(s load.Stats) { fmt.Println(s) })
			if err != nil {
				return err
			}
			fmt.Printf("\nsummary over %v:\n%v\n", total.Elapsed.Round(time.Millisecond), total)
			return nil
		},
	}
}
