package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"
)

// runSecret parses args for a command with the cluster-secret flags and
// returns what secret reads.
func runSecret(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var got string
	var gotErr error
	cmd := &cli.Command{
		Name:  "x",
		Flags: []cli.Flag{stringFlag("cluster-secret", "", ""), secretFileFlag("cluster-secret")},
		Action: func(_ context.Context, cmd *cli.Command) error {
			got, gotErr = secret(cmd, "cluster-secret")
			return nil
		},
	}
	if err := cmd.Run(context.Background(), append([]string{"x"}, args...)); err != nil {
		t.Fatal(err)
	}
	return got, gotErr
}

func TestSecretFromFlagOrFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := runSecret(t, "--cluster-secret", "plain"); err != nil || got != "plain" {
		t.Errorf("from the flag: got %q, %v, want plain", got, err)
	}
	if got, err := runSecret(t, "--cluster-secret-file", file); err != nil || got != "s3cret" {
		t.Errorf("from the file: got %q, %v, want s3cret without the newline", got, err)
	}
	if _, err := runSecret(t, "--cluster-secret", "plain", "--cluster-secret-file", file); err == nil || !strings.Contains(err.Error(), "both") {
		t.Errorf("flag and file: got %v, want an error saying both are set", err)
	}
	if _, err := runSecret(t, "--cluster-secret-file", file+".missing"); err == nil {
		t.Error("missing file: got no error")
	}
}

// TestRenamedFlagKeepsItsOldName: --id, the old name of --name, sets it,
// and so does its old environment variable.
func TestRenamedFlagKeepsItsOldName(t *testing.T) {
	name := func(args ...string) string {
		t.Helper()
		var got string
		cmd := &cli.Command{
			Name:   "x",
			Flags:  []cli.Flag{renamedStringFlag("name", "", "", "id")},
			Action: func(_ context.Context, cmd *cli.Command) error { got = cmd.String("name"); return nil },
		}
		if err := cmd.Run(context.Background(), append([]string{"x"}, args...)); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := name("--id", "n1"); got != "n1" {
		t.Errorf("--id n1: name is %q, want n1", got)
	}
	if got := name("--name", "n2"); got != "n2" {
		t.Errorf("--name n2: name is %q, want n2", got)
	}
	t.Setenv("MEMCACHE_ID", "n3")
	if got := name(); got != "n3" {
		t.Errorf("MEMCACHE_ID=n3: name is %q, want n3", got)
	}
}

func TestVersionNamesGo(t *testing.T) {
	if v := version(); !strings.Contains(v, "go1.") {
		t.Errorf("version %q does not name the Go version", v)
	}
}

// TestBadSizesAndTimeoutsAreRefused: a negative near-cache size or handoff
// timeout stops the command before it starts anything, saying which flag.
func TestBadSizesAndTimeoutsAreRefused(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"up", "--data-dir", dir, "--near-cache-mb", "-1"},
		{"frontend", "--near-cache-mb", "-3"},
		{"node", "--insecure", "--handoff-timeout", "-1s"},
	} {
		err := rootCommand().Run(context.Background(), append([]string{"memcache"}, args...))
		if err == nil || !strings.Contains(err.Error(), args[len(args)-2]) {
			t.Errorf("memcache %s: %v, want an error naming %s", strings.Join(args, " "), err, args[len(args)-2])
		}
	}
}
