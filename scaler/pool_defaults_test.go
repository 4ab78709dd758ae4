package scaler

import (
	"log/slog"
	"testing"
	"time"
)

// TestNewPoolDefaults: the defaults PoolConfig documents, and a replace
// timeout that is kept only while it is within the acquire timeout.
func TestNewPoolDefaults(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name string
		cfg  PoolConfig
		want PoolConfig
	}{
		{"zero", PoolConfig{}, PoolConfig{DeadGrace: 10 * time.Second, InitialNodes: 1, AcquireTimeout: 60 * time.Second, ReplaceTimeout: 60 * time.Second, DrainTimeout: 45 * time.Second}},
		{"negative", PoolConfig{DeadGrace: -1, InitialNodes: -1, AcquireTimeout: -1, ReplaceTimeout: -1},
			PoolConfig{DeadGrace: 10 * time.Second, InitialNodes: 1, AcquireTimeout: 60 * time.Second, ReplaceTimeout: 60 * time.Second, DrainTimeout: 45 * time.Second}},
		{"smallest set values kept", PoolConfig{DeadGrace: 1, InitialNodes: 1, AcquireTimeout: 2, ReplaceTimeout: 1},
			PoolConfig{DeadGrace: 1, InitialNodes: 1, AcquireTimeout: 2, ReplaceTimeout: 1, DrainTimeout: 45 * time.Second}},
		{"set values kept", PoolConfig{DeadGrace: time.Second, InitialNodes: 3, AcquireTimeout: time.Minute, ReplaceTimeout: time.Second},
			PoolConfig{DeadGrace: time.Second, InitialNodes: 3, AcquireTimeout: time.Minute, ReplaceTimeout: time.Second, DrainTimeout: 45 * time.Second}},
		{"replace timeout equal to acquire's", PoolConfig{AcquireTimeout: time.Minute, ReplaceTimeout: time.Minute},
			PoolConfig{DeadGrace: 10 * time.Second, InitialNodes: 1, AcquireTimeout: time.Minute, ReplaceTimeout: time.Minute, DrainTimeout: 45 * time.Second}},
		{"replace timeout above acquire's", PoolConfig{AcquireTimeout: time.Second, ReplaceTimeout: time.Minute},
			PoolConfig{DeadGrace: 10 * time.Second, InitialNodes: 1, AcquireTimeout: time.Second, ReplaceTimeout: time.Second, DrainTimeout: 45 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NewPool(tt.cfg, nil, nil, nil, log).cfg; got != tt.want {
				t.Errorf("NewPool(%+v): got config %+v, want %+v", tt.cfg, got, tt.want)
			}
		})
	}
}
