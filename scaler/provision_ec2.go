package scaler

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
)

// Tags the EC2 provisioner puts on every instance (and its volumes) when it
// launches it, and by which it finds them again.
const (
	TagCluster = "memcache:cluster" // the cluster's name (EC2Config.Cluster)
	TagRole    = "memcache:role"    // "node"
	TagMember  = "memcache:member"  // the pool member id the node runs as
)

// MaxEC2Instances bounds the live instances (pending or running) the EC2
// provisioner keeps tagged for one cluster: the pool's largest size plus
// room for two replacements in flight. Whatever goes wrong, it launches no
// more.
const MaxEC2Instances = fsm.MaxNodes + 2

// Errors of the EC2 provisioner, wrapped with what EC2 said.
var (
	// ErrEC2Permission: EC2 refused a call for lack of permission
	// (UnauthorizedOperation and friends). Fix the manager's IAM role.
	ErrEC2Permission = errors.New("EC2 refused the call: the manager's IAM role lacks a permission (compare it with deploy/aws/manager-policy.json)")
	// ErrEC2Throttled: EC2 kept throttling the calls (RequestLimitExceeded)
	// after the SDK's retries.
	ErrEC2Throttled = errors.New("EC2 is throttling this account's calls (RequestLimitExceeded) after retries with backoff")
)

// EC2API is the part of the EC2 API the provisioner uses (implemented by
// *ec2.Client).
type EC2API interface {
	RunInstances(ctx context.Context, in *ec2.RunInstancesInput, opts ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error)
	DescribeInstances(ctx context.Context, in *ec2.DescribeInstancesInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	TerminateInstances(ctx context.Context, in *ec2.TerminateInstancesInput, opts ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
}

// PoolState is the replica's view of the pool (implemented by
// *cluster.Cluster): the instances of its members are claimed.
type PoolState interface {
	State() fsm.State
}

// EC2Config configures the EC2 provisioner.
type EC2Config struct {
	// Cluster is the value of the memcache:cluster tag. Required.
	Cluster string
	// LaunchTemplate is a launch template's id (lt-...) or name. Launches
	// use it, with the fields below overriding it where set. Without it,
	// AMI is required.
	LaunchTemplate string
	// AMI is the image nodes boot.
	AMI string
	// InstanceType is the nodes' instance type. If blank and there is no
	// launch template, t3.small.
	InstanceType string
	// Subnets are the subnets nodes are spread over (round robin).
	Subnets []string
	// SecurityGroups are the nodes' security groups.
	SecurityGroups []string
	// InstanceProfile is the nodes' instance profile, a name or an ARN.
	InstanceProfile string
	// UserData renders the script a node with this member id runs at
	// first boot, joining the gossip addresses join. Required.
	UserData func(member string, join []string) ([]byte, error)
	// JoinTimeout is how long a launched instance may take to join gossip
	// before it is terminated (and replaced while an Acquire still wants
	// it). If zero, 5 minutes.
	JoinTimeout time.Duration
	// OrphanGrace is how long a tagged instance that no pool member claims
	// (and no Acquire waits for) is left running before it is terminated.
	// If zero, 10 minutes.
	OrphanGrace time.Duration
	// ReconcileInterval is how often the leader looks for orphans. If
	// zero, 30 s.
	ReconcileInterval time.Duration
	// RefusalBackoff is how long, after EC2 refused a call for lack of
	// permission or kept throttling, Acquire answers with that error again
	// without calling EC2. If zero, 1 minute.
	RefusalBackoff time.Duration
	// PollInterval is how often Acquire looks at gossip for the launched
	// nodes. If zero, 1 s.
	PollInterval time.Duration
}

// EC2 starts and stops pool nodes as tagged EC2 instances. It keeps no
// state that matters across leaders: everything it needs is in the tags,
// so a replica that takes over the leadership adopts the instances the
// previous leader launched — an idle one joins the pool instead of a new
// launch, a pending one is waited for — and terminates those no member
// claims after a grace period (Run).
type EC2 struct {
	cfg     EC2Config
	api     EC2API
	members Members
	pool    PoolState
	log     *slog.Logger

	mu        sync.Mutex           // guards the fields below
	waiting   map[string]bool      // member ids an Acquire waits for
	handed    map[string]time.Time // member ids Acquire returned, and when
	unclaimed map[string]time.Time // instance id -> when first seen unclaimed
	refused   error                // the last refusal, until refusedUntil
	refusedAt time.Time
	subnet    int // next subnet, round robin
	closed    bool
}

// NewEC2 returns an EC2 provisioner. Run its Run on the leader only.
func NewEC2(cfg EC2Config, api EC2API, members Members, pool PoolState, log *slog.Logger) (*EC2, error) {
	if cfg.Cluster == "" {
		return nil, errors.New("scaler: ec2 provisioner: the cluster name (memcache:cluster tag) is required")
	}
	if cfg.LaunchTemplate == "" && cfg.AMI == "" {
		return nil, errors.New("scaler: ec2 provisioner: give a launch template or an AMI")
	}
	if cfg.UserData == nil {
		return nil, errors.New("scaler: ec2 provisioner: UserData is required")
	}
	if cfg.InstanceType == "" && cfg.LaunchTemplate == "" {
		cfg.InstanceType = "t3.small"
	}
	if cfg.JoinTimeout <= 0 {
		cfg.JoinTimeout = 5 * time.Minute
	}
	if cfg.OrphanGrace <= 0 {
		cfg.OrphanGrace = 10 * time.Minute
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = 30 * time.Second
	}
	if cfg.RefusalBackoff <= 0 {
		cfg.RefusalBackoff = time.Minute
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	return &EC2{cfg: cfg, api: api, members: members, pool: pool, log: log.With("component", "ec2"),
		waiting: map[string]bool{}, handed: map[string]time.Time{}, unclaimed: map[string]time.Time{}}, nil
}

// instance is a live tagged instance.
type instance struct {
	id       string
	member   string
	launched time.Time
}

// Acquire returns n nodes running on tagged instances of this cluster:
// first idle nodes on instances already running (launched by an earlier
// leader, or left by a shrink), then instances still booting, and it
// launches the rest. It waits until each has joined gossip; an instance
// that has not joined within JoinTimeout is terminated and, while ctx
// allows, replaced. If it cannot supply n, it terminates what it launched
// for this call and returns ErrNoCapacity wrapped with why.
func (e *EC2) Acquire(ctx context.Context, n int, exclude []string) ([]Node, error) {
	if n < 0 {
		return nil, fmt.Errorf("scaler: acquire %d nodes: n must not be negative", n)
	}
	if err := e.refusal(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoCapacity, err)
	}
	if n == 0 {
		return nil, nil
	}
	live, err := e.describe(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoCapacity, err)
	}
	a := &acquisition{e: e}
	defer a.unhold()
	e.mu.Lock()
	busy := maps.Clone(e.waiting)
	e.mu.Unlock()
	idle := idleNodes(e.members.Members(), exclude)
	for _, in := range live {
		if len(a.got)+len(a.pending) == n {
			break
		}
		if in.member == "" || slices.Contains(exclude, in.member) || busy[in.member] {
			continue
		}
		if i := slices.IndexFunc(idle, func(nd Node) bool { return nd.ID == in.member }); i >= 0 {
			e.log.Info("adopting an idle node", "instance", in.id, "member", in.member)
			a.got = append(a.got, idle[i])
			continue
		}
		if time.Since(in.launched) < e.cfg.JoinTimeout && !e.memberKnown(in.member) {
			e.log.Info("adopting an instance still booting", "instance", in.id, "member", in.member)
			a.wait(in, false)
		}
	}
	for len(a.got)+len(a.pending) < n {
		if len(live) >= MaxEC2Instances {
			return nil, a.fail(n, fmt.Errorf("%d live instances are tagged %s=%s, the most this provisioner keeps",
				len(live), TagCluster, e.cfg.Cluster))
		}
		in, err := e.launch(ctx)
		if err != nil {
			return nil, a.fail(n, err)
		}
		live = append(live, in)
		a.wait(in, true)
	}

	tick := time.NewTicker(e.cfg.PollInterval)
	defer tick.Stop()
	for len(a.pending) > 0 {
		joined := idleNodes(e.members.Members(), exclude)
		var still []instance
		for i, l := range a.pending {
			if j := slices.IndexFunc(joined, func(nd Node) bool { return nd.ID == l.member }); j >= 0 {
				e.log.Info("node joined", "instance", l.id, "member", l.member, "after", time.Since(l.launched).Round(time.Second))
				a.got = append(a.got, joined[j])
				continue
			}
			if time.Since(l.launched) < e.cfg.JoinTimeout {
				still = append(still, l)
				continue
			}
			e.log.Warn("an instance did not join in time: terminating it and launching another",
				"instance", l.id, "member", l.member, "join_timeout", e.cfg.JoinTimeout)
			if err := e.terminateWithin(ec2CallTimeout, []string{l.id}); err != nil {
				// Launching another beside it could pass the cap.
				a.pending = append(still, a.pending[i+1:]...)
				return nil, a.fail(n, fmt.Errorf("instance %s (%s) did not join within %v and could not be terminated: %w",
					l.id, l.member, e.cfg.JoinTimeout, err))
			}
			in, err := e.launch(ctx)
			if err != nil {
				a.pending = append(still, a.pending[i+1:]...)
				return nil, a.fail(n, fmt.Errorf("instance %s (%s) did not join within %v, and no replacement: %w",
					l.id, l.member, e.cfg.JoinTimeout, err))
			}
			still = append(still, a.hold(in, true))
		}
		a.pending = still
		if len(a.pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			// The caller stopped waiting (an HTTP deadline, a lost
			// leadership), not EC2: what is still booting is left running
			// for the next Acquire to adopt, and terminated as an orphan
			// if none does within the grace.
			names := make([]string, len(a.pending))
			for i, l := range a.pending {
				names[i] = l.id + " (" + l.member + ")"
				a.ours = slices.DeleteFunc(a.ours, func(id string) bool { return id == l.id })
			}
			return nil, a.fail(n, fmt.Errorf("%s still booting when the wait ended (left for the next grow to adopt): %w", strings.Join(names, ", "), ctx.Err()))
		case <-tick.C:
		}
	}
	// Until the caller has committed them, the reconciler must not take
	// the nodes for orphans.
	e.mu.Lock()
	for _, nd := range a.got {
		e.handed[nd.ID] = time.Now()
	}
	e.mu.Unlock()
	return a.got, nil
}

// ec2CallTimeout bounds Release's and Reconcile's EC2 calls (the SDK's
// retries included), and the termination of what a failed acquire launched.
const ec2CallTimeout = time.Minute

// handedGrace is how long a node Acquire returned counts as claimed
// before the pool's state shows it: the caller's commit takes less.
const handedGrace = 5 * time.Minute

// acquisition is one Acquire in progress.
type acquisition struct {
	e       *EC2
	got     []Node     // nodes ready for the pool
	pending []instance // instances waited for
	held    []string   // members marked as waited for
	ours    []string   // instances this call launched
}

// hold marks in's member as waited for (the reconciler leaves it alone)
// and returns it.
func (a *acquisition) hold(in instance, ours bool) instance {
	a.e.mu.Lock()
	a.e.waiting[in.member] = true
	a.e.mu.Unlock()
	a.held = append(a.held, in.member)
	if ours {
		a.ours = append(a.ours, in.id)
	}
	return in
}

// wait adds in to the instances waited for.
func (a *acquisition) wait(in instance, ours bool) {
	a.pending = append(a.pending, a.hold(in, ours))
}

func (a *acquisition) unhold() {
	a.e.mu.Lock()
	defer a.e.mu.Unlock()
	for _, m := range a.held {
		delete(a.e.waiting, m)
	}
}

// fail terminates every instance this call launched (joined or not; the
// pool will not use them) and returns ErrNoCapacity wrapped with why.
// Adopted instances are left to the reconciler.
func (a *acquisition) fail(n int, why error) error {
	if len(a.ours) > 0 {
		if err := a.e.terminateWithin(ec2CallTimeout, a.ours); err != nil {
			a.e.log.Warn("terminating instances launched for a failed acquire", "instances", a.ours, "err", err)
		}
	}
	return fmt.Errorf("%w: asked for %d, found %d: %w", ErrNoCapacity, n, len(a.got), why)
}

// memberKnown reports whether gossip knows member at all (alive or not):
// a member that joined and died is not worth waiting for.
func (e *EC2) memberKnown(member string) bool {
	for _, m := range e.members.Members() {
		if m.Meta.ID == member && m.Meta.Role == gossip.RoleNode {
			return true
		}
	}
	return false
}

// launch starts one instance for a new member id.
func (e *EC2) launch(ctx context.Context) (instance, error) {
	member, err := newMemberID()
	if err != nil {
		return instance{}, err
	}
	var join []string
	for _, m := range e.members.Members() {
		if m.Meta.Role == gossip.RoleManager && m.State == gossip.StateAlive && m.Addr != "" {
			join = append(join, m.Addr)
		}
	}
	if len(join) == 0 {
		return instance{}, errors.New("no manager is alive in gossip for a new node to join")
	}
	slices.Sort(join)
	ud, err := e.cfg.UserData(member, join)
	if err != nil {
		return instance{}, fmt.Errorf("rendering the user-data of %s: %w", member, err)
	}
	tags := []types.Tag{
		{Key: aws.String(TagCluster), Value: aws.String(e.cfg.Cluster)},
		{Key: aws.String(TagRole), Value: aws.String(string(gossip.RoleNode))},
		{Key: aws.String(TagMember), Value: aws.String(member)},
		{Key: aws.String("Name"), Value: aws.String("memcache-" + e.cfg.Cluster + "-" + member)},
	}
	in := &ec2.RunInstancesInput{
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		// The member id makes a retried call (the SDK retries throttled
		// and failed requests) launch one instance, not two.
		ClientToken: aws.String(e.cfg.Cluster + "-" + member),
		UserData:    aws.String(base64.StdEncoding.EncodeToString(ud)),
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: tags},
			{ResourceType: types.ResourceTypeVolume, Tags: tags[:2]},
		},
		// IMDSv2 only, one hop: the user-data (it carries the node's key)
		// is not readable from a container on the instance.
		MetadataOptions: &types.InstanceMetadataOptionsRequest{
			HttpTokens: types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(1),
			HttpEndpoint: types.InstanceMetadataEndpointStateEnabled,
		},
	}
	if e.cfg.LaunchTemplate != "" {
		spec := &types.LaunchTemplateSpecification{Version: aws.String("$Default")}
		if strings.HasPrefix(e.cfg.LaunchTemplate, "lt-") {
			spec.LaunchTemplateId = aws.String(e.cfg.LaunchTemplate)
		} else {
			spec.LaunchTemplateName = aws.String(e.cfg.LaunchTemplate)
		}
		in.LaunchTemplate = spec
	}
	if e.cfg.AMI != "" {
		in.ImageId = aws.String(e.cfg.AMI)
	}
	if e.cfg.InstanceType != "" {
		in.InstanceType = types.InstanceType(e.cfg.InstanceType)
	}
	if len(e.cfg.Subnets) > 0 {
		e.mu.Lock()
		in.SubnetId = aws.String(e.cfg.Subnets[e.subnet%len(e.cfg.Subnets)])
		e.subnet++
		e.mu.Unlock()
	}
	if len(e.cfg.SecurityGroups) > 0 {
		in.SecurityGroupIds = e.cfg.SecurityGroups
	}
	if p := e.cfg.InstanceProfile; p != "" {
		if strings.HasPrefix(p, "arn:") {
			in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Arn: aws.String(p)}
		} else {
			in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String(p)}
		}
	}
	out, err := e.api.RunInstances(ctx, in)
	if err != nil {
		// An earlier attempt of the SDK's, or this one, may have launched
		// it all the same, its answer lost.
		e.cleanUpLaunch(member)
		return instance{}, e.classify("RunInstances", err)
	}
	if len(out.Instances) != 1 || out.Instances[0].InstanceId == nil {
		return instance{}, fmt.Errorf("EC2 RunInstances answered %d instances, want 1", len(out.Instances))
	}
	i := out.Instances[0]
	launched := time.Now()
	if i.LaunchTime != nil && i.LaunchTime.Before(launched) {
		launched = *i.LaunchTime
	}
	e.log.Info("launched a node", "instance", *i.InstanceId, "member", member, "join", join)
	return instance{id: *i.InstanceId, member: member, launched: launched}, nil
}

// cleanUpLaunch terminates the instance of a launch whose answer did not
// arrive, if EC2 launched it; what it cannot find now (EC2's listings are
// eventually consistent) the reconciler terminates as an orphan.
func (e *EC2) cleanUpLaunch(member string) {
	ctx, cancel := context.WithTimeout(context.Background(), ec2CallTimeout)
	defer cancel()
	live, err := e.describe(ctx, []string{member})
	if err != nil {
		e.log.Warn("looking for the instance of a launch that failed", "member", member, "err", err)
		return
	}
	if len(live) == 0 {
		return
	}
	ids := make([]string, len(live))
	for i, in := range live {
		ids[i] = in.id
	}
	e.log.Warn("terminating the instance of a launch whose answer was lost", "member", member, "instances", ids)
	if err := e.terminate(ctx, ids); err != nil {
		e.log.Warn("terminating the instance of a launch whose answer was lost", "member", member, "err", err)
	}
}

// Release terminates the instances of nodes that left the pool.
func (e *EC2) Release(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	// The pool releases with a context that is never cancelled.
	ctx, cancel := context.WithTimeout(ctx, ec2CallTimeout)
	defer cancel()
	live, err := e.describe(ctx, ids)
	if err != nil {
		return err
	}
	// A member the pool holds is not released, whatever the caller
	// believes (a resize whose commit was uncertain, a deposed leader).
	claimed := map[string]bool{}
	for _, m := range e.pool.State().Members {
		claimed[m.ID] = true
	}
	var term []string
	for _, in := range live {
		if claimed[in.member] {
			e.log.Warn("not terminating a node the pool holds", "member", in.member, "instance", in.id)
			continue
		}
		term = append(term, in.id)
	}
	if len(term) == 0 {
		return nil
	}
	e.log.Info("terminating nodes that left the pool", "members", ids, "instances", term)
	return e.terminate(ctx, term)
}

// Close makes later calls of Acquire fail. Instances keep running: the
// pool outlives a manager's restart.
func (e *EC2) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	return nil
}

// Run terminates, every ReconcileInterval until ctx is done, the tagged
// instances that no pool member claims and no Acquire waits for once they
// have been unclaimed for OrphanGrace. Run it on the leader only: the
// grace starts again on a new leader, which only delays a termination.
func (e *EC2) Run(ctx context.Context) {
	tick := time.NewTicker(e.cfg.ReconcileInterval)
	defer tick.Stop()
	for {
		if err := e.Reconcile(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("looking for orphaned instances", "err", err)
		}
		select {
		case <-ctx.Done():
			e.mu.Lock()
			clear(e.unclaimed)
			e.mu.Unlock()
			return
		case <-tick.C:
		}
	}
}

// Reconcile is one round of Run.
func (e *EC2) Reconcile(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, ec2CallTimeout)
	defer cancel()
	live, err := e.describe(ctx, nil)
	if err != nil {
		return err
	}
	claimed := map[string]bool{}
	for _, m := range e.pool.State().Members {
		claimed[m.ID] = true
	}
	now := time.Now()
	var orphans []string
	e.mu.Lock()
	seen := map[string]bool{}
	maps.DeleteFunc(e.handed, func(_ string, t time.Time) bool { return now.Sub(t) >= handedGrace })
	for _, in := range live {
		seen[in.id] = true
		if _, handed := e.handed[in.member]; claimed[in.member] || e.waiting[in.member] || handed {
			delete(e.unclaimed, in.id)
			continue
		}
		since, ok := e.unclaimed[in.id]
		if !ok {
			e.unclaimed[in.id] = now
			continue
		}
		if now.Sub(since) >= e.cfg.OrphanGrace {
			orphans = append(orphans, in.id)
			e.log.Warn("terminating an instance no pool member claims", "instance", in.id, "member", in.member,
				"unclaimed_for", now.Sub(since).Round(time.Second))
		}
	}
	for id := range e.unclaimed {
		if !seen[id] {
			delete(e.unclaimed, id)
		}
	}
	e.mu.Unlock()
	if len(orphans) == 0 {
		return nil
	}
	return e.terminate(ctx, orphans)
}

// describe lists the live (pending or running) instances tagged for this
// cluster's nodes, oldest first; with members, only theirs.
func (e *EC2) describe(ctx context.Context, members []string) ([]instance, error) {
	filters := []types.Filter{
		{Name: aws.String("tag:" + TagCluster), Values: []string{e.cfg.Cluster}},
		{Name: aws.String("tag:" + TagRole), Values: []string{string(gossip.RoleNode)}},
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running"}},
	}
	if len(members) > 0 {
		filters = append(filters, types.Filter{Name: aws.String("tag:" + TagMember), Values: members})
	}
	var out []instance
	p := ec2.NewDescribeInstancesPaginator(e.api, &ec2.DescribeInstancesInput{Filters: filters, MaxResults: aws.Int32(100)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, e.classify("DescribeInstances", err)
		}
		for _, r := range page.Reservations {
			for _, i := range r.Instances {
				if i.InstanceId == nil {
					continue
				}
				in := instance{id: *i.InstanceId}
				if i.LaunchTime != nil {
					in.launched = *i.LaunchTime
				}
				for _, t := range i.Tags {
					if aws.ToString(t.Key) == TagMember {
						in.member = aws.ToString(t.Value)
					}
				}
				out = append(out, in)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b instance) int { return a.launched.Compare(b.launched) })
	return out, nil
}

// terminateWithin terminates instances by id within d, whatever the
// caller's context.
func (e *EC2) terminateWithin(d time.Duration, ids []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return e.terminate(ctx, ids)
}

// terminate terminates instances by id.
func (e *EC2) terminate(ctx context.Context, ids []string) error {
	if _, err := e.api.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids}); err != nil {
		return e.classify("TerminateInstances", err)
	}
	return nil
}

// refusal is the error of a recent refusal for lack of permission or
// throttling, while RefusalBackoff lasts: Acquire answers with it without
// calling EC2, so a pool that keeps asking does not hammer the API.
func (e *EC2) refusal() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	if e.refused == nil {
		return nil
	}
	if left := e.cfg.RefusalBackoff - time.Since(e.refusedAt); left > 0 {
		return fmt.Errorf("%w (not calling EC2 again for %v)", e.refused, left.Round(time.Second))
	}
	e.refused = nil
	return nil
}

// permissionCodes are the EC2 error codes of a call the credentials may
// not make.
var permissionCodes = []string{"UnauthorizedOperation", "AuthFailure", "Blocked", "OptInRequired", "AccessDenied", "AccessDeniedException"}

// throttleCodes are EC2's throttling error codes.
var throttleCodes = []string{"RequestLimitExceeded", "Throttling", "ThrottlingException"}

// classify wraps an EC2 error: a refusal for lack of permission or
// persistent throttling becomes ErrEC2Permission or ErrEC2Throttled and
// starts the refusal backoff.
func (e *EC2) classify(op string, err error) error {
	var api smithy.APIError
	if !errors.As(err, &api) {
		return fmt.Errorf("EC2 %s: %w", op, err)
	}
	var wrapped error
	switch code := api.ErrorCode(); {
	case slices.Contains(permissionCodes, code):
		wrapped = fmt.Errorf("%w: %s: %s: %s", ErrEC2Permission, op, code, api.ErrorMessage())
	case slices.Contains(throttleCodes, code):
		wrapped = fmt.Errorf("%w: %s: %s: %s", ErrEC2Throttled, op, code, api.ErrorMessage())
	case op == "RunInstances":
		// No capacity, a vCPU limit, a bad AMI or parameter: trying again
		// at once would fail the same way.
		wrapped = fmt.Errorf("EC2 %s: %s: %s", op, code, api.ErrorMessage())
	default:
		return fmt.Errorf("EC2 %s: %s: %s", op, code, api.ErrorMessage())
	}
	e.mu.Lock()
	e.refused, e.refusedAt = wrapped, time.Now()
	e.mu.Unlock()
	e.log.Error("EC2 refused a call", "op", op, "code", api.ErrorCode(), "err", wrapped)
	return wrapped
}

// newMemberID returns a fresh pool member id for an EC2 node: ec2- and 8
// hex digits.
func newMemberID() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "ec2-" + hex.EncodeToString(b[:]), nil
}
