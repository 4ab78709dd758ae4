package auth

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestValidAdmin(t *testing.T) {
	tests := []struct {
		name, token, header string
		want                bool
	}{
		{"right token", "t0k", "Bearer t0k", true},
		{"wrong token", "t0k", "Bearer nope", false},
		{"no header", "t0k", "", false},
		{"not bearer", "t0k", "Basic t0k", false},
		{"prefix of the token", "t0k", "Bearer t0", false},
		{"no token configured, no header", "", "", true},
		{"no token configured, any header", "", "Bearer x", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			if got := ValidAdmin(r, tt.token); got != tt.want {
				t.Errorf("ValidAdmin(%q, token %q) = %v, want %v", tt.header, tt.token, got, tt.want)
			}
			rec := httptest.NewRecorder()
			RequireAdmin(tt.token)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})).ServeHTTP(rec, r)
			if want := map[bool]int{true: 200, false: 401}[tt.want]; rec.Code != want {
				t.Errorf("RequireAdmin: got %d, want %d", rec.Code, want)
			}
		})
	}
}
