package cluster

import (
	"encoding/json"
	"net/http"
	"testing"
)

// statusBody GETs /raft/status from r with token (none if blank; "Bearer"
// alone if token is "-") and returns the status and the JSON object.
func statusBody(t *testing.T, r *replica, token string) (int, map[string]any) {
	t.Helper()
	req := must(http.NewRequest("GET", r.url+"/raft/status", nil))
	switch token {
	case "":
	case "-":
		req.Header.Set("Authorization", "Bearer ")
	default:
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// privateFields are the /raft/status fields that need the admin token.
var privateFields = []string{"last_log_index", "commit_index", "applied_index", "peers", "pool_epoch",
	"pool_index", "configuration_index", "last_snapshot_index"}

// TestRaftStatusHidesIndexesAndPeersWithoutToken: anyone sees the state,
// the leader's id and the term; the indexes, the configuration and every
// address need the admin token; a wrong token is refused.
func TestRaftStatusHidesIndexesAndPeersWithoutToken(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader()
	f := tc.follower()

	code, pub := statusBody(t, f, "")
	if code != http.StatusOK {
		t.Fatalf("without a token: %d, want 200", code)
	}
	if pub["id"] != f.name || pub["state"] != "Follower" || pub["term"] == nil {
		t.Errorf("public status %v: want id %s, state Follower and the term", pub, f.name)
	}
	if leader, _ := pub["leader"].(map[string]any); leader["id"] != l.name || len(leader) != 1 {
		t.Errorf("public leader %v: want only the id %s, no address", pub["leader"], l.name)
	}
	for _, k := range append(privateFields, "last_contact") {
		if _, ok := pub[k]; ok {
			t.Errorf("public status shows %s = %v, want it hidden", k, pub[k])
		}
	}

	code, full := statusBody(t, f, testToken)
	if code != http.StatusOK {
		t.Fatalf("with the token: %d, want 200", code)
	}
	for _, k := range privateFields {
		if _, ok := full[k]; !ok {
			t.Errorf("status with the token lacks %s", k)
		}
	}
	if peers, _ := full["peers"].([]any); len(peers) != 3 {
		t.Errorf("status with the token: peers %v, want 3", full["peers"])
	}
	if leader, _ := full["leader"].(map[string]any); leader["address"] == "" || leader["address"] == nil {
		t.Errorf("status with the token: leader %v, want its address", full["leader"])
	}

	for _, bad := range []string{"wrong", "-"} {
		if code, _ := statusBody(t, f, bad); code != http.StatusUnauthorized {
			t.Errorf("with token %q: %d, want 401", bad, code)
		}
	}
}

// TestRaftStatusOpenWithoutAdminToken: with no admin token configured the
// admin API is open, and so is the whole status.
func TestRaftStatusOpenWithoutAdminToken(t *testing.T) {
	tc := newTestClusterToken(t, 1, FastTiming(), 0, "")
	l := tc.leader()
	for _, token := range []string{"", "anything"} {
		code, st := statusBody(t, l, token)
		if code != http.StatusOK {
			t.Fatalf("token %q: %d, want 200", token, code)
		}
		for _, k := range privateFields {
			if _, ok := st[k]; !ok {
				t.Errorf("token %q: status lacks %s", token, k)
			}
		}
	}
}
