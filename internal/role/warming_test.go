package role

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
)

// TestWarmingReportsHandoffsUnderWay: the scaler's Warming hook reports a
// member still filling regions from their previous owner, and nothing once
// the handoff has ended; a member that does not answer is not warming.
func TestWarmingReportsHandoffsUnderWay(t *testing.T) {
	n, err := node.New(node.Config{ID: "n2", Peers: &http.Client{}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// The previous owner holds the copy until it is let go.
	let := make(chan struct{})
	giver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-let:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	defer giver.Close()
	m := node.Regions{Epoch: 2}
	for r := range region.Count {
		m.Owners[r], m.Since[r] = "n1", 1
		if r < 4 {
			m.Owners[r], m.Since[r], m.From[r] = "n2", 2, pool.Member{ID: "n1", HTTP: giver.URL}
		}
	}
	if _, err := n.SetRegions(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	members := []fsm.Member{{ID: "n2", HTTP: srv.URL}, {ID: "gone", HTTP: dead.URL}}
	probe := warming(node.NewClient(node.ClientConfig{}), func() fsm.State { return fsm.State{Members: members} })
	why, ok := probe(context.Background())
	if !ok || !strings.Contains(why, "n2 receiving 4 regions") {
		t.Errorf("during the handoff: %q %v, want n2 receiving 4 regions", why, ok)
	}
	close(let)
	waitfor.True(t, 30*time.Second, "the handoff to end", func() bool { return len(n.Handoffs().Receiving) == 0 })
	if why, ok := probe(context.Background()); ok {
		t.Errorf("after the handoff: %q, want not warming", why)
	}
}
