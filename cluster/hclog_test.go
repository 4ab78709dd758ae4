package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLogBridgeFormatsArgs(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	l.Info("initial configuration", "servers", hclog.Fmt("%+v", []string{"a", "b"}), "port", hclog.Hex(255))
	got := buf.String()
	for _, want := range []string{`servers="[a b]"`, "port=0xff"} {
		if !strings.Contains(got, want) {
			t.Errorf("got %q, want it to contain %s", got, want)
		}
	}
}
