// Command memcache runs the memcache image store: cache nodes, Raft manager
// replicas, frontends, a load generator, or all of them on one machine (up).
//
// This package only parses flags and wires the packages together.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v3"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCommand().Run(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "memcache:", err)
		os.Exit(1)
	}
}

func rootCommand() *cli.Command {
	return &cli.Command{
		Name:    "memcache",
		Version: version(),
		Usage:   "an image store with an auto-scaling cache pool, coordinated by Raft",
		Description: "Every flag can also be set with an environment variable MEMCACHE_<FLAG>,\n" +
			"the flag's name in upper case with '-' as '_' (for example MEMCACHE_HTTP_ADDR).",
		Flags: []cli.Flag{
			stringFlag("log-level", "info", "log level: debug, info, warn or error"),
			stringFlag("log-format", "text", "log format: text or json"),
		},
		Commands: []*cli.Command{
			upCommand(),
			managerCommand(),
			nodeCommand(),
			frontendCommand(),
			loadCommand(),
			tlsCommand(),
			operatorCommand(),
			versionCommand(),
		},
	}
}

// envName is the environment variable that sets flag name.
func envName(name string) string {
	return "MEMCACHE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

func stringFlag(name, value, usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: name, Value: value, Usage: usage, Sources: cli.EnvVars(envName(name))}
}

// renamedStringFlag is a string flag that also answers to the old names
// (flags and environment variables) it had before one name per idea was
// chosen across the commands.
func renamedStringFlag(name, value, usage string, old ...string) *cli.StringFlag {
	envs := []string{envName(name)}
	for _, o := range old {
		envs = append(envs, envName(o))
	}
	return &cli.StringFlag{Name: name, Aliases: old, Value: value, Usage: usage, Sources: cli.EnvVars(envs...)}
}

// renamedIntFlag is renamedStringFlag for an int flag.
func renamedIntFlag(name string, value int, usage string, old ...string) *cli.IntFlag {
	envs := []string{envName(name)}
	for _, o := range old {
		envs = append(envs, envName(o))
	}
	return &cli.IntFlag{Name: name, Aliases: old, Value: value, Usage: usage, Sources: cli.EnvVars(envs...)}
}

// secretFileFlag is flag <name>-file, a file holding secret flag name: the
// flag itself shows in ps and /proc/<pid>/cmdline, the file does not.
func secretFileFlag(name string) *cli.StringFlag {
	return stringFlag(name+"-file", "", "file holding --"+name+" (a trailing newline is ignored), so the secret does not show in ps")
}

// secret returns the value of secret flag name, read from --name-file if
// that is set; giving both is an error.
func secret(cmd *cli.Command, name string) (string, error) {
	v, file := cmd.String(name), cmd.String(name+"-file")
	if file == "" {
		return v, nil
	}
	if v != "" {
		return "", fmt.Errorf("--%s and --%s-file are both set; give one", name, name)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s-file: %w", name, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func stringSliceFlag(name, usage string) *cli.StringSliceFlag {
	return &cli.StringSliceFlag{Name: name, Usage: usage, Sources: cli.EnvVars(envName(name))}
}

func intFlag(name string, value int, usage string) *cli.IntFlag {
	return &cli.IntFlag{Name: name, Value: value, Usage: usage, Sources: cli.EnvVars(envName(name))}
}

// newLogger builds the process's logger from the root flags.
func newLogger(cmd *cli.Command) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cmd.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f := cmd.String("log-format"); f {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", f)
	}
}
