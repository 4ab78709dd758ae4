package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/hashicorp/go-hclog"
)

// newHCLogger returns an hclog.Logger for raft that writes through log.
func newHCLogger(log *slog.Logger) hclog.Logger {
	level := hclog.Info
	if log.Enabled(context.Background(), slog.LevelDebug) {
		level = hclog.Debug
	}
	il := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: "raft", Output: io.Discard, Level: level})
	il.RegisterSink(slogSink{log})
	return il
}

// slogSink forwards hclog records to slog.
type slogSink struct{ log *slog.Logger }

func (s slogSink) Accept(_ string, level hclog.Level, msg string, args ...any) {
	var l slog.Level
	switch {
	case level <= hclog.Debug:
		l = slog.LevelDebug
	case level == hclog.Info:
		l = slog.LevelInfo
	case level == hclog.Warn:
		l = slog.LevelWarn
	default:
		l = slog.LevelError
	}
	s.log.Log(context.Background(), l, msg, slogArgs(args)...)
}

// slogArgs renders hclog's formatting values, which slog would otherwise
// print as Go slices (servers="[%+v [...]]"): hclog.Fmt as its formatted
// text, Hex, Octal and Binary as numbers in their base, Quote quoted.
func slogArgs(args []any) []any {
	out := make([]any, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case hclog.Format:
			if f, ok := firstString(v); ok {
				a = fmt.Sprintf(f, v[1:]...)
			} else {
				a = fmt.Sprint(v...)
			}
		case hclog.Hex:
			a = fmt.Sprintf("0x%x", int(v))
		case hclog.Octal:
			a = fmt.Sprintf("0%o", int(v))
		case hclog.Binary:
			a = fmt.Sprintf("0b%b", int(v))
		case hclog.Quote:
			a = strconv.Quote(string(v))
		}
		out[i] = a
	}
	return out
}

func firstString(v hclog.Format) (string, bool) {
	if len(v) == 0 {
		return "", false
	}
	s, ok := v[0].(string)
	return s, ok
}
