package deploy

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The names the AWS pieces must agree on (the shared EC2 spec): every
// security group rule is one of these ports, and the guide names them.
var (
	// awsPorts maps each port to its protocols.
	awsPorts = map[int][]string{
		7100: {"tcp"},        // node: cluster HTTP API
		7200: {"tcp"},        // manager: public UI and API
		7201: {"tcp"},        // manager: cluster listener
		7300: {"tcp"},        // manager: Raft
		7400: {"tcp", "udp"}, // manager: gossip
		7500: {"tcp", "udp"}, // frontend: gossip
		7946: {"tcp", "udp"}, // node: gossip
		8080: {"tcp"},        // frontend: public
		8081: {"tcp"},        // frontend: cluster listener
		5432: {"tcp"},        // RDS PostgreSQL
	}
	awsTagKeys = []string{"memcache:cluster", "memcache:role", "memcache:member"}
	// awsEC2Flags are the manager's flags for --provisioner ec2.
	awsEC2Flags = []string{"--ec2-cluster", "--ec2-region", "--ec2-launch-template", "--ec2-ami",
		"--ec2-instance-type", "--ec2-subnets", "--ec2-security-groups", "--ec2-instance-profile",
		"--ec2-node-tls-cert", "--ec2-node-tls-key", "--ec2-binary-url", "--ec2-binary-sha256",
		"--ec2-join-timeout", "--ec2-orphan-grace"}
)

const (
	awsDir     = "aws"
	awsScript  = "aws/aws.sh"
	awsGuide   = "../docs/aws.md"
	awsAccount = "123456789012"
	awsCluster = "memcache"
	awsRegion  = "us-east-1"
	awsAdmin   = "203.0.113.7/32"
)

// awsBucket is the bucket aws.sh names for the test's cluster.
var awsBucket = awsCluster + "-" + awsAccount + "-" + awsRegion

// awsPolicyFiles returns the JSON files of deploy/aws.
func awsPolicyFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(awsDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no JSON files in %s: %v", awsDir, err)
	}
	return files
}

// awsPolicy is the shape of an IAM policy document.
type awsPolicy struct {
	Version   string
	Statement []awsStatement
}

type awsStatement struct {
	Sid       string
	Effect    string
	Principal any
	Action    awsStrings
	Resource  awsStrings
	Condition map[string]map[string]awsStrings
}

// awsStrings is a policy element that is a string or a list of strings.
type awsStrings []string

func (s *awsStrings) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = awsStrings{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

func awsLoadPolicy(t *testing.T, file string) awsPolicy {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p awsPolicy
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("%s: not an IAM policy: %v", file, err)
	}
	return p
}

// TestAwsPolicies checks that every JSON file of deploy/aws is an IAM policy
// and that each role's policy grants no more than the spec says.
func TestAwsPolicies(t *testing.T) {
	action := regexp.MustCompile(`^[a-z0-9]+:[A-Za-z]+$`)
	// Actions AWS offers no resource-level permissions for: "*" is the only
	// possible resource.
	starOK := []string{"ec2:DescribeInstances", "cloudwatch:GetMetricData", "cloudwatch:PutMetricData"}
	for _, file := range awsPolicyFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			p := awsLoadPolicy(t, file)
			if p.Version != "2012-10-17" {
				t.Errorf("Version %q, want 2012-10-17", p.Version)
			}
			if len(p.Statement) == 0 {
				t.Fatal("no statements")
			}
			trust := strings.Contains(file, "trust")
			for i, s := range p.Statement {
				if s.Effect != "Allow" && s.Effect != "Deny" {
					t.Errorf("statement %d (%s): Effect %q", i, s.Sid, s.Effect)
				}
				if len(s.Action) == 0 {
					t.Errorf("statement %d (%s): no Action", i, s.Sid)
				}
				for _, a := range s.Action {
					if !action.MatchString(a) && a != "s3:*" {
						t.Errorf("statement %d (%s): Action %q is not service:Operation", i, s.Sid, a)
					}
				}
				switch {
				case trust:
					if s.Principal == nil || len(s.Resource) > 0 || !slices.Equal(s.Action, awsStrings{"sts:AssumeRole"}) {
						t.Errorf("statement %d (%s): a trust policy statement has a Principal, sts:AssumeRole and no Resource", i, s.Sid)
					}
				case len(s.Resource) == 0:
					t.Errorf("statement %d (%s): no Resource", i, s.Sid)
				}
				for _, r := range s.Resource {
					if r == "*" {
						for _, a := range s.Action {
							if !slices.Contains(starOK, a) {
								t.Errorf("statement %d (%s): %s on every resource", i, s.Sid, a)
							}
						}
					}
				}
			}
		})
	}

	// grants returns the Allow statements of p that name act.
	grants := func(p awsPolicy, act string) []awsStatement {
		var out []awsStatement
		for _, s := range p.Statement {
			if s.Effect == "Allow" && slices.Contains(s.Action, act) {
				out = append(out, s)
			}
		}
		return out
	}
	// cond returns the value of a condition key, whatever its operator.
	cond := func(s awsStatement, key string) []string {
		for _, kv := range s.Condition {
			if v, ok := kv[key]; ok {
				return v
			}
		}
		return nil
	}
	m := awsLoadPolicy(t, filepath.Join(awsDir, "manager-policy.json"))
	var actions []string
	for _, s := range m.Statement {
		actions = append(actions, s.Action...)
	}
	slices.Sort(actions)
	actions = slices.Compact(actions)
	want := []string{"cloudwatch:GetMetricData", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole"}
	if !slices.Equal(actions, want) {
		t.Errorf("manager actions: got %q, want %q", actions, want)
	}
	for _, s := range grants(m, "ec2:RunInstances") {
		for _, r := range s.Resource {
			if strings.Contains(r, ":instance/") || strings.Contains(r, ":volume/") {
				if got := cond(s, "aws:RequestTag/memcache:cluster"); !slices.Equal(got, []string{"${CLUSTER}"}) {
					t.Errorf("RunInstances on %s: aws:RequestTag/memcache:cluster condition %q, want ${CLUSTER}", r, got)
				}
			}
		}
	}
	for _, s := range grants(m, "ec2:CreateTags") {
		if got := cond(s, "ec2:CreateAction"); !slices.Equal(got, []string{"RunInstances"}) {
			t.Errorf("CreateTags: ec2:CreateAction %q, want RunInstances (tags only at launch)", got)
		}
		if got := cond(s, "aws:RequestTag/memcache:cluster"); !slices.Equal(got, []string{"${CLUSTER}"}) {
			t.Errorf("CreateTags: memcache:cluster condition %q, want ${CLUSTER}", got)
		}
	}
	for _, s := range grants(m, "ec2:TerminateInstances") {
		if got := cond(s, "aws:ResourceTag/memcache:cluster"); !slices.Equal(got, []string{"${CLUSTER}"}) {
			t.Errorf("TerminateInstances: aws:ResourceTag/memcache:cluster %q, want ${CLUSTER}", got)
		}
		// Managers and frontends carry the cluster tag too: only nodes may go.
		if got := cond(s, "aws:ResourceTag/memcache:role"); !slices.Equal(got, []string{"node"}) {
			t.Errorf("TerminateInstances: aws:ResourceTag/memcache:role %q, want node", got)
		}
	}
	for _, s := range grants(m, "iam:PassRole") {
		if !slices.Equal(s.Resource, awsStrings{"arn:aws:iam::${ACCOUNT}:role/${CLUSTER}-node"}) {
			t.Errorf("PassRole on %q, want the node role only", s.Resource)
		}
	}
	n := awsLoadPolicy(t, filepath.Join(awsDir, "node-policy.json"))
	if len(n.Statement) != 1 || !slices.Equal(n.Statement[0].Action, awsStrings{"cloudwatch:PutMetricData"}) ||
		!slices.Equal(cond(n.Statement[0], "cloudwatch:namespace"), []string{"Memcache"}) {
		t.Errorf("node policy: want only cloudwatch:PutMetricData with cloudwatch:namespace Memcache, got %+v", n.Statement)
	}
	f := awsLoadPolicy(t, filepath.Join(awsDir, "frontend-policy.json"))
	for _, s := range f.Statement {
		for _, a := range s.Action {
			if !slices.Contains([]string{"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}, a) {
				t.Errorf("frontend policy grants %s", a)
			}
		}
		for _, r := range s.Resource {
			if r != "arn:aws:s3:::${BUCKET}" && !strings.HasPrefix(r, "arn:aws:s3:::${BUCKET}/") {
				t.Errorf("frontend policy: resource %s is not the bucket or its objects", r)
			}
		}
	}
}

func TestAwsScriptSyntax(t *testing.T) {
	bash := awsNeed(t, "bash")
	if out, err := exec.Command(bash, "-n", awsScript).CombinedOutput(); err != nil {
		t.Fatalf("bash -n %s: %v\n%s", awsScript, err, out)
	}
}

// awsNeed returns the path of a program the test needs, or skips.
func awsNeed(t *testing.T, names ...string) string {
	t.Helper()
	var first string
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			t.Skipf("%s is not installed", n)
		}
		if first == "" {
			first = p
		}
	}
	return first
}

// awsFakeCLI stands in for the AWS CLI: it records its argv (NUL-separated,
// one call a line) in $FAKE_AWS_LOG and answers the look-ups aws.sh makes
// with canned text output. FAKE_AWS_STATE=absent answers as an account
// without the cluster, present as one where everything exists. Anything
// else fails, so a look-up the script adds must be taught here.
const awsFakeCLI = `#!/bin/bash
{ printf '%s\0' "$@"; printf '\n'; } >>"$FAKE_AWS_LOG"
args=" $* "
present() { [ "$FAKE_AWS_STATE" = present ]; }
absent() { echo "An error occurred ($1) when calling the $2 operation: not found" >&2; exit 254; }
case "$1 $2" in
"sts get-caller-identity") echo 123456789012 ;;
"ssm get-parameter") echo ami-0fake ;;
"ec2 describe-vpcs") echo vpc-0fake ;;
"ec2 describe-subnets") printf 'subnet-0a\tsubnet-0b\tsubnet-0c\n' ;;
"ec2 describe-route-tables") echo rtb-0main ;;
"ec2 describe-images") printf '/dev/xvda\t8\n' ;;
"iam get-role") present && echo arn:aws:iam::123456789012:role/x || absent NoSuchEntity GetRole ;;
"iam get-instance-profile") present && echo "$4" || absent NoSuchEntity GetInstanceProfile ;;
"iam list-role-policies") echo memcache ;;
"s3api head-bucket") present || absent 404 HeadObject ;;
"rds describe-db-instances") present && echo available || absent DBInstanceNotFound DescribeDBInstances ;;
"rds describe-db-subnet-groups") present && echo x || absent DBSubnetGroupNotFoundFault DescribeDBSubnetGroups ;;
"ec2 describe-security-groups") present && printf 'sg-0m\tsg-0n\tsg-0f\tsg-0d\n' ;;
"ec2 describe-security-group-rules") present && printf 'sgr-1\tsgr-2\n' ;;
"ec2 describe-vpc-endpoints") present && [[ $args == *tag:memcache:cluster* ]] && echo vpce-0fake ;;
"ec2 describe-launch-templates") present && echo lt-0fake ;;
"ec2 describe-network-interfaces") present && printf 'eni-0m1\neni-0f1\n' ;;
"ec2 describe-addresses") present && printf 'eipalloc-0m1\teipassoc-0m1\neipalloc-0f1\tNone\n' ;;
"ec2 describe-instances")
	if present; then
		if [[ $args == *Values=manager* ]]; then printf 'i-0m1\ti-0m2\ti-0m3\n'; else printf 'i-0n1\ti-0f1\n'; fi
	fi ;;
*) echo "fake aws: no canned answer for: $*" >&2; exit 1 ;;
esac
exit 0
`

// awsFakeMemcache stands in for "memcache tls": it writes PEM-shaped files
// that name the role and hosts it was asked for.
const awsFakeMemcache = `#!/bin/bash
dir=. name= role= hosts=()
what=$2
shift 3
while [ $# -gt 0 ]; do
	case $1 in
	--dir) dir=$2 ;;
	--name) name=$2 ;;
	--role) role=$2 ;;
	--host) hosts+=("$2") ;;
	--days) ;;
	*) echo "fake memcache: $1?" >&2; exit 2 ;;
	esac
	shift 2
done
if [ "$what" = ca ]; then
	printf -- '-----BEGIN CERTIFICATE-----\nfake CA\n-----END CERTIFICATE-----\n' >"$dir/ca.pem"
	printf -- '-----BEGIN PRIVATE KEY-----\nfake CA key\n-----END PRIVATE KEY-----\n' >"$dir/ca-key.pem"
else
	printf -- '-----BEGIN CERTIFICATE-----\nrole=%s hosts=%s\n-----END CERTIFICATE-----\n' "$role" "${hosts[*]}" >"$dir/${name:-$role}.pem"
	printf -- '-----BEGIN PRIVATE KEY-----\nkey of %s\n-----END PRIVATE KEY-----\n' "$name" >"$dir/${name:-$role}-key.pem"
fi
`

// awsRun is one run of aws.sh against the fakes.
type awsRun struct {
	dryRun [][]string // commands printed as "dry-run: ...", each its argv
	called [][]string // what the fake aws was run with (after "aws")
	stderr string
}

// awsEnv is what the runs of one test share.
type awsEnv struct {
	t     *testing.T
	bin   string // fakes, first on PATH
	state string // STATE_DIR
	guest string // MEMCACHE_BIN
}

func newAwsEnv(t *testing.T) *awsEnv {
	t.Helper()
	awsNeed(t, "bash", "gzip", "sha256sum", "od", "base64")
	e := &awsEnv{t: t, bin: t.TempDir(), state: filepath.Join(t.TempDir(), "state"), guest: filepath.Join(t.TempDir(), "memcache")}
	for name, text := range map[string]string{"aws": awsFakeCLI, "memcache": awsFakeMemcache} {
		if err := os.WriteFile(filepath.Join(e.bin, name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(e.guest, []byte("a stand-in for the linux memcache binary\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs aws.sh STEP with DRY_RUN=1, the fakes first on PATH and no way
// to reach a real account (no credentials, no instance metadata).
func (e *awsEnv) run(step, fakeState string) awsRun {
	t := e.t
	t.Helper()
	log := filepath.Join(t.TempDir(), "aws.log")
	cmd := exec.Command("bash", awsScript, step)
	cmd.Env = []string{
		"PATH=" + e.bin + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"DRY_RUN=1",
		"FAKE_AWS_LOG=" + log,
		"FAKE_AWS_STATE=" + fakeState,
		"AWS_REGION=" + awsRegion,
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		"AWS_EC2_METADATA_DISABLED=true",
		"CLUSTER=" + awsCluster,
		"ADMIN_CIDR=" + awsAdmin,
		"STATE_DIR=" + e.state,
		"MEMCACHE_BIN=" + e.guest,
		"TLS_BIN=" + filepath.Join(e.bin, "memcache"),
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("DRY_RUN=1 aws.sh %s: %v\nstderr:\n%s", step, err, stderr.String())
	}
	r := awsRun{stderr: stderr.String()}
	for _, bad := range []string{"look-up failed", "no canned answer"} {
		if strings.Contains(r.stderr, bad) {
			t.Errorf("aws.sh %s: %q in its errors (a look-up the fake aws does not know?):\n%s", step, bad, r.stderr)
		}
	}
	var lines []string
	for _, l := range strings.Split(stdout.String(), "\n") {
		if rest, ok := strings.CutPrefix(l, "dry-run: "); ok {
			lines = append(lines, rest)
		}
	}
	r.dryRun = awsUnquote(t, lines)
	if b, err := os.ReadFile(log); err == nil {
		r.called = awsRecords(string(b))
	}
	return r
}

// awsUnquote turns lines of shell words (printf %q) back into argv, with
// bash itself.
func awsUnquote(t *testing.T, lines []string) [][]string {
	t.Helper()
	var script strings.Builder
	for _, l := range lines {
		script.WriteString("set -- " + l + "\nprintf '%s\\0' \"$@\"; printf '\\n'\n")
	}
	out, err := exec.Command("bash", "-c", script.String()).Output()
	if err != nil {
		t.Fatalf("unquoting the dry-run lines: %v", err)
	}
	cmds := awsRecords(string(out))
	if len(cmds) != len(lines) {
		t.Fatalf("unquoted %d dry-run lines into %d commands", len(lines), len(cmds))
	}
	return cmds
}

// awsRecords splits argv records: NUL-terminated words, a newline after each.
func awsRecords(s string) [][]string {
	var out [][]string
	for _, rec := range strings.Split(s, "\x00\n") {
		if rec == "" {
			continue
		}
		out = append(out, strings.Split(rec, "\x00"))
	}
	return out
}

// awsCmd is an aws command: service, operation, and its options.
type awsCmd struct {
	argv []string
}

func (c awsCmd) op() string { return c.argv[1] + " " + c.argv[2] }

// opt returns the values after --name (up to the next option).
func (c awsCmd) opt(name string) []string {
	for i, a := range c.argv {
		if a == name {
			var vals []string
			for _, v := range c.argv[i+1:] {
				if strings.HasPrefix(v, "--") {
					break
				}
				vals = append(vals, v)
			}
			return vals
		}
	}
	return nil
}

func (c awsCmd) one(name string) string {
	if v := c.opt(name); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c awsCmd) String() string { return strings.Join(c.argv, " ") }

// awsCmds returns the aws commands of argv lists (what is not aws is left out).
func awsCmds(all [][]string) []awsCmd {
	var out []awsCmd
	for _, a := range all {
		if len(a) >= 3 && a[0] == "aws" {
			out = append(out, awsCmd{a})
		}
	}
	return out
}

// awsCheckLookups fails the test for every command the fake aws ran that
// is not a read-only look-up: with DRY_RUN=1 nothing may change.
func awsCheckLookups(t *testing.T, called [][]string) {
	t.Helper()
	if len(called) == 0 {
		t.Error("the fake aws was never run: the script looked nothing up")
	}
	for _, argv := range called {
		readOnly := false
		if len(argv) >= 2 {
			for _, p := range []string{"describe-", "get-", "list-", "head-"} {
				readOnly = readOnly || strings.HasPrefix(argv[1], p)
			}
		}
		if !readOnly {
			t.Errorf("DRY_RUN=1 ran a command that is not a look-up: aws %s", strings.Join(argv, " "))
		}
	}
}

// TestAwsDryRun runs "aws.sh up" and "aws.sh down" with DRY_RUN=1 against a
// fake aws and checks the commands they would run.
func TestAwsDryRun(t *testing.T) {
	e := newAwsEnv(t)
	up := e.run("up", "absent")
	upCmds := awsCmds(up.dryRun)
	if len(upCmds) < 20 {
		t.Fatalf("up printed %d aws commands; want the whole cluster\n%s", len(upCmds), up.stderr)
	}
	awsCheckLookups(t, up.called)

	t.Run("security groups", func(t *testing.T) { awsCheckIngress(t, upCmds) })
	t.Run("tags", func(t *testing.T) { awsCheckTags(t, upCmds) })
	t.Run("policies", func(t *testing.T) { awsCheckPolicies(t, upCmds, e.state) })
	t.Run("instances", func(t *testing.T) { awsCheckInstances(t, upCmds, e) })

	down := e.run("down", "present")
	downCmds := awsCmds(down.dryRun)
	awsCheckLookups(t, down.called)
	t.Run("down deletes what up creates", func(t *testing.T) { awsCheckDown(t, upCmds, downCmds) })

	again := e.run("down", "absent")
	if len(again.dryRun) != 0 {
		t.Errorf("down with nothing left would still run:\n%v", again.dryRun)
	}
}

// awsCheckIngress: every rule names exactly the spec's ports, the sources
// are security groups except for 7200 (ADMIN_CIDR) and 8080 (everyone).
func awsCheckIngress(t *testing.T, cmds []awsCmd) {
	type perm struct {
		IpProtocol       string
		FromPort, ToPort int
		UserIdGroupPairs []struct{ GroupId string }
		IpRanges         []struct{ CidrIp string }
		Ipv6Ranges       []struct{ CidrIpv6 string }
	}
	got := map[int][]string{}
	n := 0
	for _, c := range cmds {
		if c.op() != "ec2 authorize-security-group-ingress" {
			continue
		}
		n++
		if c.one("--port") != "" || c.one("--cidr") != "" || c.one("--source-group") != "" {
			t.Errorf("%s: want rules as --ip-permissions only", c)
		}
		var perms []perm
		if err := json.Unmarshal([]byte(c.one("--ip-permissions")), &perms); err != nil || len(perms) == 0 {
			t.Errorf("%s: --ip-permissions: %v", c, err)
			continue
		}
		for _, p := range perms {
			if p.FromPort != p.ToPort {
				t.Errorf("%s: a port range %d-%d", c, p.FromPort, p.ToPort)
			}
			if _, ok := awsPorts[p.FromPort]; !ok {
				t.Errorf("%s: port %d is not one of the spec's", c, p.FromPort)
			}
			got[p.FromPort] = append(got[p.FromPort], p.IpProtocol)
			if len(p.Ipv6Ranges) > 0 {
				t.Errorf("%s: IPv6 ranges", c)
			}
			for _, r := range p.IpRanges {
				switch {
				case p.FromPort == 7200 && r.CidrIp == awsAdmin:
				case p.FromPort == 8080 && r.CidrIp == "0.0.0.0/0":
				default:
					t.Errorf("%s: port %d open to %s; only 7200 (ADMIN_CIDR) and 8080 take addresses, the rest security groups", c, p.FromPort, r.CidrIp)
				}
			}
			if len(p.IpRanges) == 0 && len(p.UserIdGroupPairs) == 0 {
				t.Errorf("%s: a rule without a source", c)
			}
			if p.FromPort == 7300 && len(p.UserIdGroupPairs) != 1 {
				t.Errorf("%s: Raft (7300) must be open to the managers' group only", c)
			}
		}
	}
	if n == 0 {
		t.Fatal("no authorize-security-group-ingress")
	}
	for port, protos := range awsPorts {
		g := slices.Clone(got[port])
		slices.Sort(g)
		g = slices.Compact(g)
		if !slices.Equal(g, protos) {
			t.Errorf("port %d: rules for %q, want %q", port, g, protos)
		}
	}
}

// awsTagged reports whether the JSON of a --tags, --tag-specifications or
// --tagging value tags memcache:cluster with the test's cluster, every
// resource type if several.
func awsTagged(v string) bool {
	type tag struct{ Key, Value string }
	has := func(tags []tag) bool {
		return slices.Contains(tags, tag{"memcache:cluster", awsCluster})
	}
	var specs []struct {
		ResourceType string
		Tags         []tag
	}
	if json.Unmarshal([]byte(v), &specs) == nil && len(specs) > 0 && specs[0].ResourceType != "" {
		for _, s := range specs {
			if !has(s.Tags) {
				return false
			}
		}
		return true
	}
	var tags []tag
	if json.Unmarshal([]byte(v), &tags) == nil {
		return has(tags)
	}
	var set struct{ TagSet []tag }
	return json.Unmarshal([]byte(v), &set) == nil && has(set.TagSet)
}

// awsCreates reports whether an operation makes a new resource.
func awsCreates(op string) bool {
	_, o, _ := strings.Cut(op, " ")
	return strings.HasPrefix(o, "create-") || o == "run-instances" || o == "allocate-address"
}

func awsCheckTags(t *testing.T, cmds []awsCmd) {
	tagged := map[string]bool{} // buckets tagged after creation
	for _, c := range cmds {
		if c.op() == "s3api put-bucket-tagging" && awsTagged(c.one("--tagging")) {
			tagged[c.one("--bucket")] = true
		}
	}
	n := 0
	for _, c := range cmds {
		if !awsCreates(c.op()) {
			continue
		}
		n++
		if c.op() == "s3api create-bucket" {
			if !tagged[c.one("--bucket")] {
				t.Errorf("%s: the bucket is never tagged memcache:cluster=%s", c, awsCluster)
			}
			continue
		}
		v := c.one("--tag-specifications")
		if v == "" {
			v = c.one("--tags")
		}
		if !awsTagged(v) {
			t.Errorf("%s: not tagged memcache:cluster=%s", c, awsCluster)
		}
		if c.op() == "ec2 run-instances" && (!strings.Contains(v, `"instance"`) || !strings.Contains(v, `"volume"`)) {
			t.Errorf("%s: instance and volume must both be tagged at launch", c)
		}
	}
	if n < 10 {
		t.Errorf("only %d create calls", n)
	}
}

// awsFill fills a policy template's placeholders as aws.sh does for the
// test's account, with the fake aws's VPC and the dry run's endpoint.
func awsFill(text string) string {
	return strings.NewReplacer("${REGION}", awsRegion, "${ACCOUNT}", awsAccount, "${CLUSTER}", awsCluster,
		"${VPC}", "vpc-0fake", "${BUCKET}", awsBucket, "${S3_PREFIX}", "memcache/", "${VPCE}", "vpce-DRYRUN").Replace(text)
}

// awsCheckPolicies: the documents aws.sh hands to IAM and S3 are the JSON
// files of deploy/aws, filled in, and every file is used.
func awsCheckPolicies(t *testing.T, cmds []awsCmd, state string) {
	used := map[string]bool{}
	check := func(c awsCmd, opt, want string) {
		v := c.one(opt)
		path, ok := strings.CutPrefix(v, "file://")
		if !ok {
			t.Errorf("%s: %s %q is not a file", c, opt, v)
			return
		}
		if filepath.Base(path) != want {
			t.Errorf("%s: %s is %s, want %s", c, opt, filepath.Base(path), want)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Error(err)
			return
		}
		tmpl, err := os.ReadFile(filepath.Join(awsDir, want))
		if err != nil {
			t.Error(err)
			return
		}
		if strings.TrimSpace(string(got)) != strings.TrimSpace(awsFill(string(tmpl))) {
			t.Errorf("%s: %s differs from deploy/aws/%s filled in:\n%s", c, path, want, got)
		}
		if !json.Valid(got) || bytes.Contains(got, []byte("${")) {
			t.Errorf("%s: not valid JSON, or a placeholder is left", path)
		}
		used[want] = true
	}
	roles := 0
	for _, c := range cmds {
		switch c.op() {
		case "iam put-role-policy":
			role := c.one("--role-name")
			kind := strings.TrimPrefix(role, awsCluster+"-")
			check(c, "--policy-document", kind+"-policy.json")
			roles++
		case "iam create-role":
			check(c, "--assume-role-policy-document", "ec2-trust-policy.json")
		case "s3api put-bucket-policy":
			check(c, "--policy", "bucket-policy.json")
		}
	}
	if roles != 3 {
		t.Errorf("%d role policies, want manager, node and frontend", roles)
	}
	for _, f := range awsPolicyFiles(t) {
		if !used[filepath.Base(f)] {
			t.Errorf("%s is not used by aws.sh up", f)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "policies")); err != nil {
		t.Error(err)
	}
}

// awsCheckInstances: IMDSv2 with hop limit 1 everywhere, and the user-data
// of every instance fits EC2's limit and installs its role with provision.sh.
func awsCheckInstances(t *testing.T, cmds []awsCmd, e *awsEnv) {
	var lt struct {
		MetadataOptions struct {
			HttpTokens              string
			HttpPutResponseHopLimit int
		}
	}
	for _, c := range cmds {
		switch c.op() {
		case "ec2 run-instances":
			if c.one("--metadata-options") != "HttpEndpoint=enabled,HttpTokens=required,HttpPutResponseHopLimit=1" {
				t.Errorf("%s: want IMDSv2 required with hop limit 1", c)
			}
		case "ec2 create-launch-template":
			path := strings.TrimPrefix(c.one("--launch-template-data"), "file://")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &lt); err != nil {
				t.Fatal(err)
			}
			if lt.MetadataOptions.HttpTokens != "required" || lt.MetadataOptions.HttpPutResponseHopLimit != 1 {
				t.Errorf("launch template: %+v, want IMDSv2 required with hop limit 1", lt.MetadataOptions)
			}
		}
	}
	node, err := os.ReadFile(filepath.Join(e.state, "tls", "ec2-node.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(node), "role=node hosts=*.ec2.internal") {
		t.Errorf("EC2 node certificate: %s; want role node for *.ec2.internal", node)
	}

	// A python3 that "downloads" the binary: user-data fetches with python3.
	fakes := t.TempDir()
	py := "#!/bin/bash\ncat >/dev/null\ncp " + strconv.Quote(e.guest) + " \"$3\"\n"
	if err := os.WriteFile(filepath.Join(fakes, "python3"), []byte(py), 0o755); err != nil {
		t.Fatal(err)
	}
	for member, role := range map[string]string{"m1": "manager", "m2": "manager", "m3": "manager", "f1": "frontend"} {
		gz := filepath.Join(e.state, "userdata", member+".gz")
		run := member == "m1" || member == "f1" // m2 and m3 differ from m1 only in values
		st, err := os.Stat(gz)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 16384 {
			t.Errorf("%s: %d bytes, over EC2's 16 KiB", gz, st.Size())
		}
		f, err := os.Open(gz)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		script, err := io.ReadAll(zr)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !run {
			if out, err := exec.Command("bash", "-n", "-c", string(script)).CombinedOutput(); err != nil {
				t.Errorf("%s user-data: bash -n: %v\n%s", member, err, out)
			}
			continue
		}
		root := t.TempDir()
		file := filepath.Join(t.TempDir(), member+".sh")
		if err := os.WriteFile(file, script, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("bash", file)
		cmd.Env = []string{"PREFIX=" + root, "PATH=" + fakes + string(os.PathListSeparator) + os.Getenv("PATH")}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s user-data under PREFIX: %v\n%s", member, err, out)
			continue
		}
		env, err := os.ReadFile(filepath.Join(root, "etc/memcache", role+".env"))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{`MEMCACHE_NAME="` + member + `"`, `MEMCACHE_JOIN="`, `MEMCACHE_TLS_CERT="/etc/memcache/tls/` + role + `.pem"`}
		switch role {
		case "manager":
			want = append(want, `MEMCACHE_PROVISIONER="ec2"`, `MEMCACHE_EC2_CLUSTER="`+awsCluster+`"`,
				`MEMCACHE_EC2_NODE_TLS_CERT="/etc/memcache/tls/ec2-node.pem"`,
				`MEMCACHE_EC2_NODE_TLS_KEY="/run/credentials/memcache-manager.service/ec2-node-key"`,
				`MEMCACHE_PUBLIC_TLS_CERT=`)
			for _, f := range []string{"etc/memcache/tls/ec2-node.pem", "etc/memcache/tls/ec2-node-key.pem",
				"etc/systemd/system/memcache-manager.service.d/aws.conf"} {
				if _, err := os.Stat(filepath.Join(root, f)); err != nil {
					t.Errorf("%s: %v", member, err)
				}
			}
			dropIn, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system/memcache-manager.service.d/aws.conf"))
			if !strings.Contains(string(dropIn), "LoadCredential=ec2-node-key:/etc/memcache/tls/ec2-node-key.pem") {
				t.Errorf("%s: the drop-in does not hand the node key to the manager:\n%s", member, dropIn)
			}
			// Every --ec2-* variable is one of the spec's flags.
			for _, m := range regexp.MustCompile(`(?m)^MEMCACHE_EC2_([A-Z0-9_]+)=`).FindAllStringSubmatch(string(env), -1) {
				flag := "--ec2-" + strings.ReplaceAll(strings.ToLower(m[1]), "_", "-")
				if !slices.Contains(awsEC2Flags, flag) {
					t.Errorf("%s: MEMCACHE_EC2_%s is not a flag of the spec (%s)", member, m[1], flag)
				}
			}
		case "frontend":
			want = append(want, `sslmode=verify-full&sslrootcert=/etc/memcache/tls/rds-ca.pem"`,
				`MEMCACHE_S3_BUCKET="`+awsBucket+`"`, `AWS_REGION="`+awsRegion+`"`)
			if _, err := os.Stat(filepath.Join(root, "etc/memcache/tls/rds-ca.pem")); err != nil {
				t.Errorf("%s: %v", member, err)
			}
		}
		for _, w := range want {
			if !strings.Contains(string(env), w) {
				t.Errorf("%s: %s.env lacks %s:\n%s", member, role, w, env)
			}
		}
		if _, err := os.Stat(filepath.Join(root, "var/lib/cloud/scripts/per-boot/memcache-aws")); err != nil {
			t.Errorf("%s: no per-boot hook: %v", member, err)
		}
		if _, err := os.Stat(filepath.Join(root, "var/lib/memcache-aws/tls")); err == nil {
			t.Errorf("%s: the staged keys are left in /var/lib/memcache-aws/tls", member)
		}
	}
}

// awsUndo maps each kind of thing up makes to the operation that takes it
// away in down.
var awsUndo = map[string]string{
	"iam create-role":                      "iam delete-role",
	"iam put-role-policy":                  "iam delete-role-policy",
	"iam create-instance-profile":          "iam delete-instance-profile",
	"iam add-role-to-instance-profile":     "iam remove-role-from-instance-profile",
	"ec2 create-security-group":            "ec2 delete-security-group",
	"ec2 authorize-security-group-ingress": "ec2 revoke-security-group-ingress",
	"ec2 create-vpc-endpoint":              "ec2 delete-vpc-endpoints",
	"s3api create-bucket":                  "s3api delete-bucket",
	"s3 cp":                                "s3 rm",
	"ec2 create-launch-template":           "ec2 delete-launch-template",
	"rds create-db-subnet-group":           "rds delete-db-subnet-group",
	"rds create-db-instance":               "rds delete-db-instance",
	"ec2 create-network-interface":         "ec2 delete-network-interface",
	"ec2 allocate-address":                 "ec2 release-address",
	"ec2 associate-address":                "ec2 disassociate-address",
	"ec2 run-instances":                    "ec2 terminate-instances",
	"s3api put-bucket-tagging":             "s3api delete-bucket",
	"s3api put-public-access-block":        "s3api delete-bucket",
	"s3api put-bucket-ownership-controls":  "s3api delete-bucket",
	"s3api put-bucket-encryption":          "s3api delete-bucket",
	"s3api put-bucket-policy":              "s3api delete-bucket",
}

func awsCheckDown(t *testing.T, up, down []awsCmd) {
	first := map[string]int{} // operation -> index of its first call in down
	for i, c := range down {
		if _, ok := first[c.op()]; !ok {
			first[c.op()] = i
		}
	}
	var ops []string
	for _, c := range up {
		if c.argv[2] == "wait" {
			continue
		}
		ops = append(ops, c.op())
	}
	sort.Strings(ops)
	for _, op := range slices.Compact(ops) {
		undo, ok := awsUndo[op]
		if !ok {
			t.Errorf("up runs %q, which down has no undoing operation for (add it to aws.sh down and awsUndo)", op)
			continue
		}
		if _, ok := first[undo]; !ok {
			t.Errorf("up runs %q; down never runs %q", op, undo)
		}
	}
	// Names up gives are the names down deletes.
	names := func(cmds []awsCmd, op, opt string) []string {
		var out []string
		for _, c := range cmds {
			if c.op() == op {
				out = append(out, c.one(opt))
			}
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	for _, n := range []struct{ create, delete, opt string }{
		{"iam create-role", "iam delete-role", "--role-name"},
		{"iam create-instance-profile", "iam delete-instance-profile", "--instance-profile-name"},
		{"s3api create-bucket", "s3api delete-bucket", "--bucket"},
		{"rds create-db-instance", "rds delete-db-instance", "--db-instance-identifier"},
		{"rds create-db-subnet-group", "rds delete-db-subnet-group", "--db-subnet-group-name"},
	} {
		if c, d := names(up, n.create, n.opt), names(down, n.delete, n.opt); !slices.Equal(c, d) {
			t.Errorf("%s %s: up makes %q, down deletes %q", n.delete, n.opt, c, d)
		}
	}
	// Down deletes every tagged thing the fake aws reported.
	ids := func(op, opt string) []string {
		var out []string
		for _, c := range down {
			if c.op() == op {
				out = append(out, c.opt(opt)...)
			}
		}
		slices.Sort(out)
		return out
	}
	for _, w := range []struct {
		op, opt string
		want    []string
	}{
		{"ec2 terminate-instances", "--instance-ids", []string{"i-0f1", "i-0m1", "i-0m2", "i-0m3", "i-0n1"}},
		{"ec2 release-address", "--allocation-id", []string{"eipalloc-0f1", "eipalloc-0m1"}},
		{"ec2 disassociate-address", "--association-id", []string{"eipassoc-0m1"}},
		{"ec2 delete-network-interface", "--network-interface-id", []string{"eni-0f1", "eni-0m1"}},
		{"ec2 delete-security-group", "--group-id", []string{"sg-0d", "sg-0f", "sg-0m", "sg-0n"}},
		{"ec2 delete-launch-template", "--launch-template-id", []string{"lt-0fake"}},
		{"ec2 delete-vpc-endpoints", "--vpc-endpoint-ids", []string{"vpce-0fake"}},
	} {
		if got := ids(w.op, w.opt); !slices.Equal(got, w.want) {
			t.Errorf("%s %s: got %q, want %q", w.op, w.opt, got, w.want)
		}
	}
	// Dependency order.
	if len(down) == 0 {
		t.Fatal("down printed no commands")
	}
	if down[0].op() != "ec2 terminate-instances" || !slices.Equal(down[0].opt("--instance-ids"), []string{"i-0m1", "i-0m2", "i-0m3"}) {
		t.Errorf("down must first terminate the managers (so none launches a node meanwhile), starts with %v", down[0])
	}
	for _, o := range [][2]string{
		{"ec2 terminate-instances", "ec2 delete-network-interface"},
		{"ec2 disassociate-address", "ec2 release-address"},
		{"ec2 terminate-instances", "ec2 delete-security-group"},
		{"rds delete-db-instance", "rds delete-db-subnet-group"},
		{"rds delete-db-instance", "ec2 delete-security-group"},
		{"ec2 revoke-security-group-ingress", "ec2 delete-security-group"},
		{"ec2 terminate-instances", "ec2 delete-launch-template"},
		{"s3 rm", "s3api delete-bucket"},
		{"iam remove-role-from-instance-profile", "iam delete-instance-profile"},
		{"iam delete-instance-profile", "iam delete-role"},
		{"iam delete-role-policy", "iam delete-role"},
	} {
		a, okA := first[o[0]]
		b, okB := first[o[1]]
		if !okA || !okB || a > b {
			t.Errorf("down must run %q before %q", o[0], o[1])
		}
	}
}

// TestAwsGuide checks that docs/aws.md names what the script and the
// policies use, so the guide and the script cannot drift apart.
func TestAwsGuide(t *testing.T) {
	b, err := os.ReadFile(awsGuide)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for port, protos := range awsPorts {
		for _, p := range protos {
			if !strings.Contains(doc, strconv.Itoa(port)+"/"+p) && !strings.Contains(doc, strconv.Itoa(port)+"/tcp+udp") {
				t.Errorf("docs/aws.md does not name %d/%s", port, p)
			}
		}
	}
	// The security group table names exactly the spec's ports.
	_, section, ok := strings.Cut(doc, "\n## Security groups\n")
	if !ok {
		t.Fatal(`docs/aws.md has no "## Security groups" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	got := map[int]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\|.*`).FindAllString(section, -1) {
		for _, p := range regexp.MustCompile(`\b(\d{2,5})/(tcp|udp)`).FindAllStringSubmatch(m, -1) {
			n, _ := strconv.Atoi(p[1])
			got[n] = true
			if _, ok := awsPorts[n]; !ok {
				t.Errorf("docs/aws.md security groups name %s/%s, not a port of the spec", p[1], p[2])
			}
		}
	}
	for port := range awsPorts {
		if !got[port] {
			t.Errorf("docs/aws.md's security group table lacks %d", port)
		}
	}
	for _, k := range awsTagKeys {
		if !strings.Contains(doc, k) {
			t.Errorf("docs/aws.md does not name the tag %s", k)
		}
	}
	for _, f := range awsPolicyFiles(t) {
		if !strings.Contains(doc, "deploy/aws/"+filepath.Base(f)) {
			t.Errorf("docs/aws.md does not name deploy/aws/%s", filepath.Base(f))
		}
	}
	for _, f := range append(slices.Clone(awsEC2Flags), "--provisioner ec2", "--metrics cloudwatch",
		"deploy/aws/aws.sh up", "deploy/aws/aws.sh down", "DRY_RUN=1", "sslmode=verify-full", "ec2:DescribeInstanceAttribute") {
		if !strings.Contains(doc, f) {
			t.Errorf("docs/aws.md does not name %s", f)
		}
	}
	// Every setting the script reads is documented in the guide.
	script, err := os.ReadFile(awsScript)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^([A-Z_]+)=\$\{[A-Z_]+:-`).FindAllStringSubmatch(string(script), -1) {
		if !strings.Contains(doc, m[1]) {
			t.Errorf("docs/aws.md does not mention the setting %s", m[1])
		}
	}
}
