package scaler_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/ec2fake"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/scaler"
)

// ec2Wait bounds every wait of these tests: generous, for a busy machine.
const ec2Wait = 60 * time.Second

// sdkAttempts is how many times the test clients' SDK retryer tries a call.
const sdkAttempts = 4

// ec2Env is a fake EC2 driven by the real SDK, a manager's gossip for the
// nodes to join, and "booting": an instance the fake launches joins gossip
// as its member id unless the test says it never will.
type ec2Env struct {
	t      *testing.T
	fake   *ec2fake.Server
	api    *ec2.Client
	mgr    *gossip.Gossip
	pool   *poolView
	mu     sync.Mutex
	noBoot map[int]bool      // launch ordinals (1-based) that never join
	gate   chan struct{}     // if set, boots wait until it is closed
	watch  *countingMembers  // if set, the provisioner's gossip view
	booted []*gossip.Gossip  // guarded by mu
	data   map[string][]byte // member -> user-data rendered, guarded by mu
	joins  map[string][]string
	n      int // launches seen, guarded by mu
}

func newEC2Env(t *testing.T) *ec2Env {
	t.Helper()
	env := &ec2Env{t: t, fake: ec2fake.New(), pool: &poolView{}, noBoot: map[int]bool{},
		data: map[string][]byte{}, joins: map[string][]string{}}
	t.Cleanup(env.fake.Close)
	cfg := aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "SECRET", ""),
		Retryer: func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = sdkAttempts
				o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return time.Millisecond, nil })
			})
		},
	}
	env.api = ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(env.fake.URL()) })
	env.mgr = env.member("m1", gossip.RoleManager)
	t.Cleanup(func() {
		env.mu.Lock()
		defer env.mu.Unlock()
		for _, g := range env.booted {
			g.Close()
		}
	})
	env.fake.SetOnLaunch(env.boot)
	return env
}

// member starts a gossip member joined to the manager's gossip.
func (env *ec2Env) member(id string, role gossip.Role) *gossip.Gossip {
	var join []string
	if env.mgr != nil {
		join = []string{env.mgr.Addr()}
	}
	g, err := gossip.New(gossip.Config{BindAddr: "127.0.0.1:0", Join: join, Fast: true,
		Meta: gossip.Meta{Role: role, ID: id, HTTP: "https://" + id + ".invalid:7100"}}, autoLogger(env.t))
	if err != nil {
		env.t.Error(err)
		return nil
	}
	return g
}

// boot is the fake's launch hook: the instance's node joins gossip.
func (env *ec2Env) boot(in ec2fake.Instance) {
	env.mu.Lock()
	env.n++
	skip := env.noBoot[env.n]
	env.mu.Unlock()
	if skip {
		return
	}
	if env.gate != nil {
		<-env.gate
	}
	g := env.member(in.Tags[scaler.TagMember], gossip.RoleNode)
	if g == nil {
		return
	}
	env.mu.Lock()
	env.booted = append(env.booted, g)
	env.mu.Unlock()
}

// provisioner returns an EC2 provisioner over the fake with test timings;
// edit changes its config.
func (env *ec2Env) provisioner(edit func(*scaler.EC2Config)) *scaler.EC2 {
	env.t.Helper()
	cfg := scaler.EC2Config{
		Cluster: "test", AMI: "ami-0123", InstanceType: "t3.micro",
		Subnets: []string{"subnet-a", "subnet-b"}, SecurityGroups: []string{"sg-nodes"}, InstanceProfile: "memcache-node",
		UserData: func(member string, join []string) ([]byte, error) {
			env.mu.Lock()
			defer env.mu.Unlock()
			ud := []byte("#!/bin/bash\n# node " + member + " joins " + strings.Join(join, ",") + "\n")
			env.data[member], env.joins[member] = ud, join
			return ud, nil
		},
		JoinTimeout: ec2Wait, OrphanGrace: time.Hour, PollInterval: 20 * time.Millisecond, RefusalBackoff: time.Hour,
	}
	if edit != nil {
		edit(&cfg)
	}
	var members scaler.Members = env.mgr
	if env.watch != nil {
		members = env.watch
	}
	p, err := scaler.NewEC2(cfg, env.api, members, env.pool, autoLogger(env.t))
	if err != nil {
		env.t.Fatal(err)
	}
	return p
}

// acquire runs Acquire within ec2Wait.
func (env *ec2Env) acquire(p *scaler.EC2, n int, exclude ...string) ([]scaler.Node, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ec2Wait)
	defer cancel()
	return p.Acquire(ctx, n, exclude)
}

// live returns the fake's pending or running instances by member tag.
func (env *ec2Env) live() map[string]ec2fake.Instance {
	out := map[string]ec2fake.Instance{}
	for _, in := range env.fake.Instances() {
		if in.State == "pending" || in.State == "running" {
			out[in.Tags[scaler.TagMember]] = in
		}
	}
	return out
}

// add puts an instance into the fake as if another leader had launched it.
func (env *ec2Env) add(cluster, member string, launched time.Time) ec2fake.Instance {
	tags := map[string]string{scaler.TagCluster: cluster, scaler.TagRole: "node"}
	if member != "" {
		tags[scaler.TagMember] = member
	}
	return env.fake.Add(ec2fake.Instance{ImageID: "ami-0123", State: "running", Tags: tags, LaunchTime: launched})
}

// poolView is a settable PoolState.
type poolView struct {
	mu      sync.Mutex
	members []string
}

func (v *poolView) set(ids ...string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.members = ids
}

func (v *poolView) State() fsm.State {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := fsm.DefaultState()
	for _, id := range v.members {
		st.Members = append(st.Members, fsm.Member{ID: id, HTTP: "https://" + id + ".invalid:7100"})
	}
	return st
}

func nodeIDs(ns []scaler.Node) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.ID
	}
	slices.Sort(out)
	return out
}

// TestEC2LaunchesTaggedNodes: growing by two launches two instances, each
// tagged with the cluster, the role and its member id, IMDSv2 only, with
// the user-data rendered for that member (joining the managers' gossip),
// spread over the subnets; Acquire returns them once they joined gossip.
func TestEC2LaunchesTaggedNodes(t *testing.T) {
	env := newEC2Env(t)
	p := env.provisioner(nil)
	got, err := env.acquire(p, 2)
	if err != nil {
		t.Fatal(err)
	}
	if n := env.fake.Calls("RunInstances"); n != 2 {
		t.Errorf("RunInstances calls: got %d, want 2", n)
	}
	live := env.live()
	if len(got) != 2 || len(live) != 2 {
		t.Fatalf("got nodes %v and live instances %v, want 2 of each", got, live)
	}
	subnets := map[string]bool{}
	for _, n := range got {
		in, ok := live[n.ID]
		if !ok {
			t.Fatalf("node %s has no instance tagged %s=%s", n.ID, scaler.TagMember, n.ID)
		}
		if !strings.HasPrefix(n.ID, "ec2-") || n.HTTP != "https://"+n.ID+".invalid:7100" {
			t.Errorf("node %+v: want an ec2- member id and the URL it advertises", n)
		}
		want := map[string]string{scaler.TagCluster: "test", scaler.TagRole: "node", scaler.TagMember: n.ID, "Name": "memcache-test-" + n.ID}
		for k, v := range want {
			if in.Tags[k] != v {
				t.Errorf("instance %s tag %s: got %q, want %q", in.ID, k, in.Tags[k], v)
			}
		}
		if in.HTTPTokens != "required" || in.ImageID != "ami-0123" || in.InstanceType != "t3.micro" ||
			in.InstanceProfile != "memcache-node" || !slices.Equal(in.SecurityGroups, []string{"sg-nodes"}) {
			t.Errorf("instance %+v: want IMDSv2 required, the AMI, type, profile and security group", in)
		}
		env.mu.Lock()
		ud, join := env.data[n.ID], env.joins[n.ID]
		env.mu.Unlock()
		if string(in.UserData) != string(ud) || !slices.Equal(join, []string{env.mgr.Addr()}) {
			t.Errorf("instance %s user-data %q (join %v), want the one rendered for it, joining %s", in.ID, in.UserData, join, env.mgr.Addr())
		}
		if in.ClientToken != "test-"+n.ID {
			t.Errorf("instance %s client token %q, want %q: an SDK retry of a launch whose answer was lost must not launch twice", in.ID, in.ClientToken, "test-"+n.ID)
		}
		subnets[in.SubnetID] = true
	}
	if len(subnets) != 2 {
		t.Errorf("subnets used: %v, want both", subnets)
	}
}

// TestEC2NewLeaderAdopts: a new leader's provisioner takes the idle node
// and the still-booting instance the previous leader launched instead of
// launching new ones; the instances of the pool it then holds are claimed,
// so none is an orphan.
func TestEC2NewLeaderAdopts(t *testing.T) {
	env := newEC2Env(t)
	old := env.provisioner(nil)
	first, err := env.acquire(old, 1) // launched; the leader died before the resize committed
	if err != nil {
		t.Fatal(err)
	}
	booting := env.add("test", "ec2-booting", time.Now()) // launched, not joined yet
	old.Close()

	p := env.provisioner(func(c *scaler.EC2Config) { c.OrphanGrace = time.Nanosecond })
	describes := env.fake.Calls("DescribeInstances")
	type result struct {
		nodes []scaler.Node
		err   error
	}
	done := make(chan result, 1)
	go func() {
		nodes, err := env.acquire(p, 2)
		done <- result{nodes, err}
	}()
	waitfor.True(t, ec2Wait, "the new leader to look at the instances", func() bool {
		return env.fake.Calls("DescribeInstances") > describes
	})
	late := env.member("ec2-booting", gossip.RoleNode) // the booting instance's node joins
	defer late.Close()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got, want := nodeIDs(r.nodes), []string{"ec2-booting", first[0].ID}; !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("adopted %v, want %v", got, want)
	}
	if n := env.fake.Calls("RunInstances"); n != 1 {
		t.Errorf("RunInstances calls: got %d, want 1 (the old leader's): the new leader launched duplicates", n)
	}
	// Handed out but not yet committed: not orphans either.
	for range 2 { // the first round notes, the second would terminate
		if err := p.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(env.live()); n != 2 {
		t.Errorf("after reconciling before the pool committed what it was handed: %d live, want 2", n)
	}
	env.pool.set(first[0].ID, "ec2-booting")
	for range 2 {
		if err := p.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if in, _ := env.fake.Instance(booting.ID); in.State != "running" || len(env.live()) != 2 {
		t.Errorf("after reconciling a pool that claims both: live %v, want both running", env.live())
	}
}

// TestEC2TerminatesOrphans: a tagged instance no pool member claims is
// terminated once it has been unclaimed for the grace period, and not on
// first sight; claimed instances, other clusters' and untagged ones are
// left alone.
func TestEC2TerminatesOrphans(t *testing.T) {
	env := newEC2Env(t)
	p := env.provisioner(func(c *scaler.EC2Config) { c.OrphanGrace = 200 * time.Millisecond })
	orphan := env.add("test", "ec2-orphan", time.Now().Add(-time.Hour))
	claimed := env.add("test", "ec2-claimed", time.Now().Add(-time.Hour))
	other := env.add("other", "ec2-theirs", time.Now().Add(-time.Hour))
	untagged := env.fake.Add(ec2fake.Instance{ImageID: "ami-0123", State: "running"})
	env.pool.set("ec2-claimed")

	if err := p.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if in, _ := env.fake.Instance(orphan.ID); in.State != "running" {
		t.Fatalf("orphan on first sight: %s, want it left running until the grace ends", in.State)
	}
	waitfor.True(t, ec2Wait, "the orphan to be terminated", func() bool {
		if err := p.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
		in, _ := env.fake.Instance(orphan.ID)
		return in.State == "shutting-down" || in.State == "terminated"
	})
	for _, in := range []ec2fake.Instance{claimed, other, untagged} {
		if got, _ := env.fake.Instance(in.ID); got.State != "running" {
			t.Errorf("instance %s (tags %v): %s, want running", in.ID, in.Tags, got.State)
		}
	}
}

// TestEC2ReleaseTerminates: a node that left the pool has its instance
// terminated; the others keep running; an unknown member is no error.
func TestEC2ReleaseTerminates(t *testing.T) {
	env := newEC2Env(t)
	p := env.provisioner(nil)
	got, err := env.acquire(p, 2)
	if err != nil {
		t.Fatal(err)
	}
	gone, kept := got[0].ID, got[1].ID
	if err := p.Release(t.Context(), []string{gone, "ec2-unknown"}); err != nil {
		t.Fatal(err)
	}
	live := env.live()
	if _, ok := live[gone]; ok {
		t.Errorf("released member %s still has a live instance", gone)
	}
	if _, ok := live[kept]; !ok {
		t.Errorf("member %s lost its instance, want it running", kept)
	}

	// A member the pool holds is never terminated, whoever asks.
	env.pool.set(kept)
	if err := p.Release(t.Context(), []string{kept}); err != nil {
		t.Fatal(err)
	}
	if _, ok := env.live()[kept]; !ok {
		t.Errorf("Release of %s, a member the pool holds, terminated its instance", kept)
	}
}

// TestEC2Throttling: throttled calls are retried by the SDK with backoff;
// throttling that outlasts the retries fails the acquire with
// ErrEC2Throttled, and the next acquire within the backoff does not call
// EC2 at all.
func TestEC2Throttling(t *testing.T) {
	env := newEC2Env(t)
	p := env.provisioner(nil)
	env.fake.Fail("RunInstances", "RequestLimitExceeded", 2)
	if _, err := env.acquire(p, 1); err != nil {
		t.Fatalf("two throttled calls: %v, want the SDK's third attempt to launch", err)
	}
	if n := env.fake.Calls("RunInstances"); n != 3 {
		t.Errorf("RunInstances calls: got %d, want 3", n)
	}
	if n := len(env.live()); n != 1 {
		t.Errorf("live instances: got %d, want 1 (retries must not launch twice)", n)
	}

	env.fake.Fail("RunInstances", "RequestLimitExceeded", -1)
	_, err := env.acquire(p, 1, nodeIDs(mustNodes(t, env))...)
	if !errors.Is(err, scaler.ErrEC2Throttled) || !errors.Is(err, scaler.ErrNoCapacity) {
		t.Fatalf("throttled for good: got %v, want ErrEC2Throttled and ErrNoCapacity", err)
	}
	if n := env.fake.Calls("RunInstances"); n != 3+sdkAttempts {
		t.Errorf("RunInstances calls: got %d, want %d", n, 3+sdkAttempts)
	}
	calls := env.fake.Calls("RunInstances") + env.fake.Calls("DescribeInstances")
	if _, err := env.acquire(p, 1); !errors.Is(err, scaler.ErrEC2Throttled) {
		t.Errorf("acquire within the backoff: got %v, want the throttling error again", err)
	}
	if n := env.fake.Calls("RunInstances") + env.fake.Calls("DescribeInstances"); n != calls {
		t.Errorf("acquire within the backoff made %d EC2 calls, want none", n-calls)
	}
}

// mustNodes returns the members of the live instances as nodes.
func mustNodes(t *testing.T, env *ec2Env) []scaler.Node {
	var out []scaler.Node
	for m := range env.live() {
		out = append(out, scaler.Node{ID: m})
	}
	return out
}

// TestEC2PermissionError: UnauthorizedOperation is not retried; the
// acquire fails with ErrEC2Permission naming the code and the policy to
// compare with, and the auto-scaler's decision log carries that error —
// the manager keeps running, and later rounds do not call EC2 while the
// backoff lasts.
func TestEC2PermissionError(t *testing.T) {
	env := newEC2Env(t)
	p := env.provisioner(nil)
	env.fake.Fail("RunInstances", "UnauthorizedOperation", -1)

	raft := newFakeRaft(1, autoPolicy)
	raft.state.Members = []fsm.Member{{ID: "ec2-first", HTTP: "https://ec2-first.invalid:7100"}}
	pool := scaler.NewPool(scaler.PoolConfig{AcquireTimeout: ec2Wait}, raft, env.mgr, p, autoLogger(t))
	rates := &fakeRates{script: []metrics.Totals{missTotals(100, 90)}}
	as := scaler.NewAutoScaler(scaler.AutoScalerConfig{Interval: time.Minute}, raft, pool, rates, autoLogger(t))

	d := as.Tick(t.Context())
	if d.Action != fsm.ActionGrow || d.Applied || !strings.Contains(d.Error, "UnauthorizedOperation") ||
		!strings.Contains(d.Error, "deploy/aws/manager-policy.json") {
		t.Errorf("decision: %+v, want a grow not applied, its error naming UnauthorizedOperation and the policy file", d)
	}
	if n := env.fake.Calls("RunInstances"); n != 1 {
		t.Errorf("RunInstances calls: got %d, want 1 (a permission error is not retried)", n)
	}
	d = as.Tick(t.Context())
	if d.Applied || !strings.Contains(d.Error, "UnauthorizedOperation") {
		t.Errorf("second round: %+v, want the same refusal", d)
	}
	if n := env.fake.Calls("RunInstances"); n != 1 {
		t.Errorf("RunInstances calls after a second round: got %d, want still 1 during the backoff", n)
	}
	if got := len(raft.State().Members); got != 1 {
		t.Errorf("pool size: got %d, want 1", got)
	}
	if len(env.live()) != 0 {
		t.Errorf("live instances %v, want none", env.live())
	}
}

// TestEC2ReplacesAnInstanceThatNeverJoins: an instance that has not joined
// gossip within the join timeout is terminated and another launched in
// its place, which the acquire returns.
func TestEC2ReplacesAnInstanceThatNeverJoins(t *testing.T) {
	env := newEC2Env(t)
	env.noBoot[1] = true
	// Long enough for the replacement to join on a busy machine (EC2's
	// launch times have whole seconds: the first one waits 4 to 5 s).
	p := env.provisioner(func(c *scaler.EC2Config) { c.JoinTimeout = 5 * time.Second })
	got, err := env.acquire(p, 1)
	if err != nil {
		t.Fatal(err)
	}
	ins := env.fake.Instances()
	if len(ins) != 2 {
		t.Fatalf("instances launched: %d, want 2 (one replacement)", len(ins))
	}
	if ins[0].State != "shutting-down" && ins[0].State != "terminated" {
		t.Errorf("the instance that never joined: %s, want it terminated", ins[0].State)
	}
	if got[0].ID != ins[1].Tags[scaler.TagMember] {
		t.Errorf("acquired %s, want the replacement %s", got[0].ID, ins[1].Tags[scaler.TagMember])
	}
}

// TestEC2AcquireCutShortLeavesBootingInstances: when the caller stops
// waiting (an HTTP deadline) before the node joined, the acquire fails with
// ErrNoCapacity and leaves the booting instance running; the next acquire
// adopts it instead of launching another.
func TestEC2AcquireCutShortLeavesBootingInstances(t *testing.T) {
	env := newEC2Env(t)
	env.gate = make(chan struct{})
	t.Cleanup(func() { closeOnce(env.gate) })
	env.watch = &countingMembers{view: env.mgr}
	p := env.provisioner(nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := p.Acquire(ctx, 1, nil)
		done <- err
	}()
	// Cancelled while the acquire waits for the node to join: after the
	// launch was answered (a launch cut off before its answer is looked up
	// and terminated instead), which a look at gossip after the instance
	// exists shows.
	waitfor.True(t, ec2Wait, "the launch", func() bool { return len(env.fake.Instances()) == 1 })
	seen := env.watch.count()
	waitfor.True(t, ec2Wait, "the acquire to wait for the node", func() bool { return env.watch.count() > seen })
	cancel()
	if err := <-done; !errors.Is(err, scaler.ErrNoCapacity) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want ErrNoCapacity after the wait was cancelled", err)
	}
	if live := env.live(); len(live) != 1 {
		t.Fatalf("live instances after the wait was cut short: %v, want the booting one left running", live)
	}
	closeOnce(env.gate)
	got, err := env.acquire(p, 1)
	if err != nil {
		t.Fatal(err)
	}
	if n := env.fake.Calls("RunInstances"); n != 1 || got[0].ID != env.fake.Instances()[0].Tags[scaler.TagMember] {
		t.Errorf("second acquire: %v with %d launches, want the booting instance adopted and 1 launch", got, n)
	}
}

// TestEC2FailedLaunchTerminatesItsOtherLaunches: when a launch fails,
// what the acquire launched before it is terminated.
func TestEC2FailedLaunchTerminatesItsOtherLaunches(t *testing.T) {
	env := newEC2Env(t)
	p := env.provisioner(nil)
	env.fake.SetOnLaunch(func(ec2fake.Instance) {
		env.fake.Fail("RunInstances", "InsufficientInstanceCapacity", -1) // the second launch fails
	})
	_, err := env.acquire(p, 2)
	if !errors.Is(err, scaler.ErrNoCapacity) || !strings.Contains(err.Error(), "InsufficientInstanceCapacity") {
		t.Fatalf("got %v, want ErrNoCapacity with EC2's refusal", err)
	}
	if live := env.live(); len(live) != 0 {
		t.Errorf("live instances after a failed launch: %v, want the first launch terminated", live)
	}
}

func closeOnce(c chan struct{}) {
	select {
	case <-c:
	default:
		close(c)
	}
}

// TestEC2StaysWithinBounds: with the most instances this provisioner keeps
// already live, an acquire launches nothing.
func TestEC2StaysWithinBounds(t *testing.T) {
	env := newEC2Env(t)
	p := env.provisioner(nil)
	var busy []string
	for i := range scaler.MaxEC2Instances {
		m := fmt.Sprintf("ec2-busy%d", i)
		env.add("test", m, time.Now().Add(-time.Hour))
		busy = append(busy, m)
	}
	_, err := env.acquire(p, 1, busy...)
	if !errors.Is(err, scaler.ErrNoCapacity) || !strings.Contains(err.Error(), "the most") {
		t.Fatalf("got %v, want ErrNoCapacity saying the most instances are live", err)
	}
	if n := env.fake.Calls("RunInstances"); n != 0 {
		t.Errorf("RunInstances calls: got %d, want 0", n)
	}
	if _, err := env.acquire(p, -1); err == nil {
		t.Error("acquire -1: got no error")
	}
}

// TestEC2ConfigRefused: a provisioner without a cluster name, an image or
// user-data is refused.
func TestEC2ConfigRefused(t *testing.T) {
	env := newEC2Env(t)
	ud := func(string, []string) ([]byte, error) { return nil, nil }
	for _, cfg := range []scaler.EC2Config{
		{AMI: "ami-1", UserData: ud},
		{Cluster: "c", UserData: ud},
		{Cluster: "c", AMI: "ami-1"},
	} {
		if _, err := scaler.NewEC2(cfg, env.api, env.mgr, env.pool, autoLogger(t)); err == nil {
			t.Errorf("NewEC2(%+v): got no error", cfg)
		}
	}
}

// fsmApplier applies commands to a real FSM, as Raft would on one replica.
type fsmApplier struct {
	mu    sync.Mutex
	f     *fsm.FSM
	index uint64
}

func (a *fsmApplier) Apply(_ context.Context, cmd fsm.Command) (fsm.Result, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	data, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	a.index++
	res := a.f.Apply(&raft.Log{Index: a.index, Term: 1, Type: raft.LogCommand, Data: data}).(fsm.Result)
	return res, res.Err
}

func (a *fsmApplier) State() fsm.State { return a.f.State() }

// TestPoolReplacesAFailedEC2NodeAtOnceAndGrowsBack: a failed node's
// regions go to the survivors within the replace timeout, not after an
// instance's boot; the pool then grows back in the background with the
// instance launched for the replacement (adopted, not launched twice), and
// the failed node's instance is terminated.
func TestPoolReplacesAFailedEC2NodeAtOnceAndGrowsBack(t *testing.T) {
	env := newEC2Env(t)
	env.gate = make(chan struct{})
	t.Cleanup(func() { closeOnce(env.gate) })
	prov := env.provisioner(nil)
	a, b := env.member("ec2-a", gossip.RoleNode), env.member("ec2-b", gossip.RoleNode)
	defer a.Close()
	env.add("test", "ec2-a", time.Now().Add(-time.Hour))
	bInstance := env.add("test", "ec2-b", time.Now().Add(-time.Hour))
	raft := &fsmApplier{f: fsm.New()}
	members := []fsm.Member{{ID: "ec2-a", HTTP: "https://ec2-a.invalid:7100"}, {ID: "ec2-b", HTTP: "https://ec2-b.invalid:7100"}}
	if _, err := raft.Apply(t.Context(), fsm.Resize{Members: members}); err != nil {
		t.Fatal(err)
	}
	env.pool = &poolView{}
	pool := scaler.NewPool(scaler.PoolConfig{DeadGrace: time.Hour, AcquireTimeout: ec2Wait, ReplaceTimeout: 200 * time.Millisecond},
		raft, env.mgr, prov, autoLogger(t))
	waitfor.True(t, ec2Wait, "both nodes alive in the manager's gossip", func() bool {
		n := 0
		for _, m := range env.mgr.Members() {
			if m.Meta.Role == gossip.RoleNode && m.State == gossip.StateAlive {
				n++
			}
		}
		return n == 2
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); pool.Run(ctx) }()
	defer func() { cancel(); <-done }()

	b.Close() // ec2-b leaves
	waitfor.True(t, ec2Wait, "ec2-b's regions given to ec2-a", func() bool {
		st := raft.State()
		return len(st.Members) == 1 && st.Members[0].ID == "ec2-a"
	})
	if n := len(env.fake.Instances()); n != 3 {
		t.Errorf("instances: %d, want the two and one launched for the replacement", n)
	}
	waitfor.True(t, ec2Wait, "ec2-b's instance terminated", func() bool {
		in, _ := env.fake.Instance(bInstance.ID)
		return in.State == "shutting-down" || in.State == "terminated"
	})
	closeOnce(env.gate) // the replacement finishes booting
	waitfor.True(t, ec2Wait, "the pool grown back to 2", func() bool { return len(raft.State().Members) == 2 })
	if n := env.fake.Calls("RunInstances"); n != 1 {
		t.Errorf("RunInstances calls: %d, want 1 (the grow-back adopts the instance launched for the replacement)", n)
	}
}

// countingMembers is a gossip view that counts how often it is read.
type countingMembers struct {
	view scaler.Members
	mu   sync.Mutex
	n    int
}

func (c *countingMembers) Members() []gossip.Member {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.view.Members()
}

func (c *countingMembers) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
