// Package waitfor lets tests wait for a condition with a deadline instead of
// sleeping for a guessed time.
package waitfor

import (
	"testing"
	"time"
)

// True polls cond every 10 ms and fails the test if it has not become true
// within timeout; what names the condition in the failure message.
func True(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
