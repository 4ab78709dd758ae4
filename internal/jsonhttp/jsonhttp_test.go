package jsonhttp

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWriters(t *testing.T) {
	tests := []struct {
		name  string
		write func(http.ResponseWriter)
		code  int
		body  string
	}{
		{"write", func(w http.ResponseWriter) { Write(w, http.StatusOK, map[string]any{"success": "true", "n": 3}) },
			200, `{"n":3,"success":"true"}` + "\n"},
		{"error", func(w http.ResponseWriter) { Error(w, http.StatusBadRequest, "bad %q", "x") },
			400, `{"error":{"code":400,"message":"bad \"x\""}}` + "\n"},
		{"tester error", func(w http.ResponseWriter) { TesterError(w, http.StatusNotFound, "no key %s", "k") },
			404, `{"error":{"code":404,"message":"no key k"},"success":"false"}` + "\n"},
		{"literal percent", func(w http.ResponseWriter) { Error(w, http.StatusServiceUnavailable, "%v", "100% busy") },
			503, `{"error":{"code":503,"message":"100% busy"}}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			rec.Header().Set("X-Kept", "1")
			tt.write(rec)
			if rec.Code != tt.code {
				t.Errorf("status: got %d, want %d", rec.Code, tt.code)
			}
			if got := rec.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type: got %q, want application/json", got)
			}
			if got := rec.Header().Get("X-Kept"); got != "1" {
				t.Errorf("X-Kept: got %q, want 1 (headers set before the call are kept)", got)
			}
			if got := rec.Body.String(); got != tt.body {
				t.Errorf("body: got %s, want %s", got, tt.body)
			}
		})
	}
}
