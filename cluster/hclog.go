package cluster

import (
	"context"
	"io"
	"log/slog"

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
	s.log.Log(context.Background(), l, msg, args...)
}
