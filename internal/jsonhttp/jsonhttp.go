// Package jsonhttp writes JSON answers and the two JSON error envelopes to an http.ResponseWriter.
package jsonhttp

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Write answers with status code and v encoded as JSON (one line, followed by
// a newline), with Content-Type application/json. Headers set on w before the
// call are kept.
func Write(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v) // the status is sent; a failed write has nobody to tell
}

// errorBody is the inner object of both error envelopes.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// Error answers with status code and the internal APIs' error envelope:
//
//	{"error":{"code":N,"message":"..."}}
//
// where N is code and the message is fmt.Sprintf(format, args...).
func Error(w http.ResponseWriter, code int, format string, args ...any) {
	Write(w, code, struct {
		Error errorBody `json:"error"`
	}{errorBody{code, fmt.Sprintf(format, args...)}})
}

// TesterError answers with status code and the course tester's error
// envelope, where "success" is the string "false":
//
//	{"error":{"code":N,"message":"..."},"success":"false"}
func TesterError(w http.ResponseWriter, code int, format string, args ...any) {
	Write(w, code, struct {
		Error   errorBody `json:"error"`
		Success string    `json:"success"`
	}{errorBody{code, fmt.Sprintf(format, args...)}, "false"})
}
