package main

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/urfave/cli/v3"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version (module version, VCS revision and Go version)",
		Action: func(_ context.Context, cmd *cli.Command) error {
			fmt.Fprintln(cmd.Root().Writer, "memcache", version())
			return nil
		},
	}
}

// version describes this binary from its build information: the module
// version, the VCS revision and time (with "+dirty" for uncommitted
// changes) when built from a checkout, and the Go version.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, at string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" {
		v += " " + rev
		if dirty {
			v += "+dirty"
		}
		if at != "" {
			v += " " + at
		}
	}
	return v + " " + bi.GoVersion
}
