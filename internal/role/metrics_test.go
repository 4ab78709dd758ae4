package role_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/internal/waitfor"
)

// TestManagerMetricsExportRaftAndMemberlist: once a group has formed and
// committed a write, every replica's /metrics carries hashicorp/raft's and
// memberlist's go-metrics series beside the manager's own gauges, and the
// scrape succeeds (several replicas in one process share the go-metrics
// sink without a registration conflict).
func TestManagerMetricsExportRaftAndMemberlist(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Managers: 3, Nodes: 1})
	if code := testcluster.Write(t, "PUT", c.Follower().URL()+"/v1/config/cache", []byte(`{"capacity_mb":32}`), nil); code != 200 {
		t.Fatalf("config write: %d", code)
	}
	want := []string{
		// raft
		"raft_state_leader", "raft_apply", "raft_commitTime", "raft_fsm_apply",
		// memberlist
		"memberlist_gossip", "memberlist_msg_alive",
		// the manager's own
		"memcache_manager_is_leader", "memcache_manager_pool_nodes", "memcache_manager_pool_epoch",
		"memcache_manager_fsm_halted_index 0", "memcache_manager_fsm_ignored_entries_total 0",
	}
	for _, m := range c.Managers {
		var body string
		var missing []string
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s: missing %v in:\n%s", m.Name(), missing, body)
			}
		})
		waitfor.True(t, testcluster.Wait, m.Name()+"'s /metrics to carry raft and memberlist series", func() bool {
			resp, err := http.Get(m.URL() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /metrics on %s: %d\n%s", m.Name(), resp.StatusCode, b)
			}
			body, missing = string(b), nil
			for _, w := range want {
				if !hasSeries(body, w) {
					missing = append(missing, w)
				}
			}
			return len(missing) == 0
		})
	}
}

// hasSeries reports whether the exposition body has a sample line that
// starts with series (a name, or a name and value).
func hasSeries(body, series string) bool {
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, series+" ") || strings.HasPrefix(line, series+"{") ||
			strings.HasPrefix(line, series+"_sum") || strings.HasPrefix(line, series+"\n") || strings.TrimSpace(line) == series {
			return true
		}
	}
	return false
}
