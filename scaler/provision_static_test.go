package scaler

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/memcache/memcache/gossip"
)

func TestStaticChoice(t *testing.T) {
	member := func(id string, role gossip.Role, state gossip.State) gossip.Member {
		return gossip.Member{Name: id, Meta: gossip.Meta{Role: role, ID: id, HTTP: "http://" + id}, State: state}
	}
	view := staticView{
		member("n3", gossip.RoleNode, gossip.StateAlive),
		member("n1", gossip.RoleNode, gossip.StateAlive),
		member("m1", gossip.RoleManager, gossip.StateAlive),
		member("f1", gossip.RoleFrontend, gossip.StateAlive),
		member("n2", gossip.RoleNode, gossip.StateLeaving),
		member("n4", gossip.RoleNode, gossip.StateAlive),
		{Name: "nohttp", Meta: gossip.Meta{Role: gossip.RoleNode, ID: "nohttp"}},
	}
	tests := []struct {
		name    string
		n       int
		exclude []string
		want    []string
		wantErr error
	}{
		{"none", 0, nil, []string{}, nil},
		{"sorted by id", 2, nil, []string{"n1", "n3"}, nil},
		{"all idle", 3, nil, []string{"n1", "n3", "n4"}, nil},
		{"exclude", 2, []string{"n1"}, []string{"n3", "n4"}, nil},
		{"too many", 4, nil, nil, ErrNoCapacity},
		{"too many after exclude", 3, []string{"n4"}, nil, ErrNoCapacity},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NewStatic(view).Acquire(context.Background(), tc.n, tc.exclude)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				return
			}
			ids := []string{}
			for _, n := range got {
				ids = append(ids, n.ID)
				if n.HTTP != "http://"+n.ID {
					t.Errorf("node %s: HTTP = %q, want %q", n.ID, n.HTTP, "http://"+n.ID)
				}
			}
			if !reflect.DeepEqual(ids, tc.want) {
				t.Errorf("got %v, want %v", ids, tc.want)
			}
		})
	}
}

func TestStaticGossip(t *testing.T) {
	ctx := context.Background()
	mgr := startGossipMember(t, "mgr", gossip.RoleManager)
	nodes := map[string]*gossip.Gossip{}
	for _, id := range []string{"n3", "n1", "n2"} {
		nodes[id] = startGossipMember(t, id, gossip.RoleNode, mgr.Addr())
	}
	waitUntil(t, "the manager to see 3 nodes", func() bool {
		ms := mgr.Members()
		return hasAlive(ms, "n1", gossip.RoleNode) && hasAlive(ms, "n2", gossip.RoleNode) && hasAlive(ms, "n3", gossip.RoleNode)
	})
	s := NewStatic(mgr)
	defer s.Close()

	got, err := s.Acquire(ctx, 2, []string{"n2"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Node{{"n1", "http://n1.invalid:1"}, {"n3", "http://n3.invalid:1"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Acquire(2, exclude n2) = %v, want %v", got, want)
	}

	_, err = s.Acquire(ctx, 4, nil)
	if !errors.Is(err, ErrNoCapacity) || !strings.Contains(err.Error(), "found 3") {
		t.Fatalf("Acquire(4) err = %v, want ErrNoCapacity saying it found 3", err)
	}

	if err := nodes["n1"].Close(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "n1 to leave", func() bool { return !hasAlive(mgr.Members(), "n1", gossip.RoleNode) })
	got, err = s.Acquire(ctx, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	want = []Node{{"n2", "http://n2.invalid:1"}, {"n3", "http://n3.invalid:1"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Acquire(2) after n1 left = %v, want %v", got, want)
	}
	if _, err := s.Acquire(ctx, 3, nil); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("Acquire(3) after n1 left: err = %v, want ErrNoCapacity", err)
	}
	if err := s.Release(ctx, []string{"n2"}); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if !hasAlive(mgr.Members(), "n2", gossip.RoleNode) {
		t.Fatalf("n2 left after Static.Release; want it left running")
	}
}
