package gossip

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// newStdLogger returns a *log.Logger for memberlist that forwards every line
// to l. memberlist writes lines such as "[DEBUG] memberlist: Stream
// connection from=..."; the bracketed tag becomes the slog level and the
// "memberlist: " prefix is dropped (the logger carries lib=memberlist).
func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(logWriter{log: l.With("lib", "memberlist")}, "", 0)
}

// logWriter is the io.Writer behind newStdLogger. A *log.Logger calls Write
// once per line, so each call is one record.
type logWriter struct {
	log *slog.Logger
}

// Write logs p as one record and never fails.
func (w logWriter) Write(p []byte) (int, error) {
	level, msg := parseLogLine(string(p))
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}

// parseLogLine splits a memberlist log line into a level and a message.
// Lines without a known tag are logged at Info, unchanged.
func parseLogLine(line string) (slog.Level, string) {
	line = strings.TrimRight(line, "\r\n")
	level := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			known := true
			switch line[1:end] {
			case "TRACE", "DEBUG":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			case "WARN", "WARNING":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			default:
				known = false
			}
			if known {
				line = strings.TrimSpace(line[end+1:])
			}
		}
	}
	return level, strings.TrimPrefix(line, "memberlist: ")
}
