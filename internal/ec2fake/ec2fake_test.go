package ec2fake

import (
	"context"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// newClient starts a server and a real SDK client for it whose standard
// retryer does not wait between attempts.
func newClient(t *testing.T) (*Server, *ec2.Client) {
	t.Helper()
	s := New()
	t.Cleanup(s.Close)
	c := ec2.NewFromConfig(aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		Retryer: func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
			})
		},
	}, func(o *ec2.Options) { o.BaseEndpoint = aws.String(s.URL()) })
	return s, c
}

var ctx = context.Background()

func run(t *testing.T, c *ec2.Client, n int32, tags ...string) *ec2.RunInstancesOutput {
	t.Helper()
	in := &ec2.RunInstancesInput{ImageId: aws.String("ami-1"), MinCount: aws.Int32(1), MaxCount: aws.Int32(n)}
	if len(tags) > 0 {
		spec := types.TagSpecification{ResourceType: types.ResourceTypeInstance}
		for i := 0; i+1 < len(tags); i += 2 {
			spec.Tags = append(spec.Tags, types.Tag{Key: aws.String(tags[i]), Value: aws.String(tags[i+1])})
		}
		in.TagSpecifications = []types.TagSpecification{spec}
	}
	out, err := c.RunInstances(ctx, in)
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	return out
}

// wantCode fails unless err is an API error with code and HTTP status.
func wantCode(t *testing.T, err error, code string, status int) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != code {
		t.Fatalf("error %v: want API error %s", err, code)
	}
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != status {
		t.Fatalf("error %v: want HTTP status %d", err, status)
	}
}

// describe answers DescribeInstances as id → state.
func describe(t *testing.T, c *ec2.Client, in *ec2.DescribeInstancesInput) map[string]string {
	t.Helper()
	out, err := c.DescribeInstances(ctx, in)
	if err != nil {
		t.Fatalf("DescribeInstances: %v", err)
	}
	got := map[string]string{}
	for _, r := range out.Reservations {
		for _, i := range r.Instances {
			got[*i.InstanceId] = string(i.State.Name)
		}
	}
	return got
}

func TestRunInstances(t *testing.T) {
	s, c := newClient(t)
	ud := []byte("#!/bin/sh\necho hi\n")
	out, err := c.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String("ami-1"), InstanceType: types.InstanceTypeT3Small,
		MinCount: aws.Int32(2), MaxCount: aws.Int32(3),
		SubnetId: aws.String("subnet-1"), SecurityGroupIds: []string{"sg-1", "sg-2"},
		IamInstanceProfile: &types.IamInstanceProfileSpecification{Name: aws.String("node")},
		UserData:           aws.String(base64.StdEncoding.EncodeToString(ud)),
		MetadataOptions:    &types.InstanceMetadataOptionsRequest{HttpTokens: types.HttpTokensStateRequired},
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{{Key: aws.String("memcache:cluster"), Value: aws.String("c")}, {Key: aws.String("Name"), Value: aws.String("n")}}},
			{ResourceType: types.ResourceTypeVolume, Tags: []types.Tag{{Key: aws.String("memcache:cluster"), Value: aws.String("c")}}},
		},
	})
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	if !strings.HasPrefix(*out.ReservationId, "r-") || *out.OwnerId != OwnerID || len(out.Instances) != 3 {
		t.Fatalf("got reservation %s owner %s with %d instances, want r-…, %s, 3", *out.ReservationId, *out.OwnerId, len(out.Instances), OwnerID)
	}
	all := s.Instances()
	for i, x := range out.Instances {
		want := netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)}).String()
		if *x.PrivateIpAddress != want || x.State.Name != types.InstanceStateNamePending || *x.State.Code != 0 ||
			*x.ImageId != "ami-1" || x.InstanceType != types.InstanceTypeT3Small || !x.LaunchTime.Equal(all[i].LaunchTime) ||
			len(x.Tags) != 2 || *x.IamInstanceProfile.Arn != "arn:aws:iam::"+OwnerID+":instance-profile/node" ||
			x.MetadataOptions.HttpTokens != types.HttpTokensStateRequired || len(x.SecurityGroups) != 2 || *x.AmiLaunchIndex != int32(i) {
			t.Errorf("instance %d in the answer: %+v", i, x)
		}
		in := all[i]
		if in.ID != *x.InstanceId || in.PrivateIP != want || in.State != "pending" || in.SubnetID != "subnet-1" ||
			in.InstanceProfile != "node" || in.HTTPTokens != "required" || string(in.UserData) != string(ud) ||
			!slices.Equal(in.SecurityGroups, []string{"sg-1", "sg-2"}) || in.ClientToken == "" ||
			len(in.Tags) != 2 || in.Tags["memcache:cluster"] != "c" || in.Tags["Name"] != "n" {
			t.Errorf("stored instance %d: %+v", i, in)
		}
	}
	// A launch template may stand in for the AMI.
	out, err = c.RunInstances(ctx, &ec2.RunInstancesInput{MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		LaunchTemplate: &types.LaunchTemplateSpecification{LaunchTemplateName: aws.String("nodes"), Version: aws.String("$Latest")}})
	if err != nil {
		t.Fatalf("RunInstances from a template: %v", err)
	}
	if in, _ := s.Instance(*out.Instances[0].InstanceId); in.LaunchTemplate != "nodes" || in.ImageID != "" || in.PrivateIP != "10.0.0.13" {
		t.Errorf("got %+v, want LaunchTemplate nodes, no image, 10.0.0.13", in)
	}
}

func TestRunInstancesRefused(t *testing.T) {
	for _, tc := range []struct {
		name, code string
		in         ec2.RunInstancesInput
	}{
		{"no image or template", "MissingParameter", ec2.RunInstancesInput{}},
		{"MinCount 0", "InvalidParameterValue", ec2.RunInstancesInput{ImageId: aws.String("a"), MinCount: aws.Int32(0), MaxCount: aws.Int32(1)}},
		{"MinCount > MaxCount", "InvalidParameterValue", ec2.RunInstancesInput{ImageId: aws.String("a"), MinCount: aws.Int32(3), MaxCount: aws.Int32(2)}},
		{"user data over 16 KiB", "InvalidParameterValue", ec2.RunInstancesInput{ImageId: aws.String("a"),
			UserData: aws.String(base64.StdEncoding.EncodeToString(make([]byte, 16<<10+1)))}},
		{"user data not base64", "InvalidParameterValue", ec2.RunInstancesInput{ImageId: aws.String("a"), UserData: aws.String("%%%")}},
		{"bad HttpTokens", "InvalidParameterValue", ec2.RunInstancesInput{ImageId: aws.String("a"),
			MetadataOptions: &types.InstanceMetadataOptionsRequest{HttpTokens: "sometimes"}}},
		{"template id and name", "InvalidParameterCombination", ec2.RunInstancesInput{
			LaunchTemplate: &types.LaunchTemplateSpecification{LaunchTemplateId: aws.String("lt-1"), LaunchTemplateName: aws.String("n")}}},
		{"aws: tag", "InvalidParameterValue", ec2.RunInstancesInput{ImageId: aws.String("a"), TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{{Key: aws.String("aws:x"), Value: aws.String("v")}}}}}},
		{"untaggable type", "InvalidParameterValue", ec2.RunInstancesInput{ImageId: aws.String("a"), TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeVpc, Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}}}}},
		{"dry run", "DryRunOperation", ec2.RunInstancesInput{ImageId: aws.String("a"), DryRun: aws.Bool(true)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c := newClient(t)
			in := tc.in
			if in.MinCount == nil {
				in.MinCount, in.MaxCount = aws.Int32(1), aws.Int32(1)
			}
			_, err := c.RunInstances(ctx, &in)
			status := http.StatusBadRequest
			if tc.code == "DryRunOperation" {
				status = http.StatusPreconditionFailed
			}
			wantCode(t, err, tc.code, status)
			if n := len(s.Instances()); n != 0 || s.Calls("RunInstances") != 1 {
				t.Errorf("got %d instances after %d calls, want 0 after 1", n, s.Calls("RunInstances"))
			}
		})
	}
}

func TestAddresses(t *testing.T) {
	s, c := newClient(t)
	s.SetAddresses(netip.MustParsePrefix("10.9.0.0/28")) // .10 to .15
	out := run(t, c, 4)
	if got := *out.Instances[3].PrivateIpAddress; got != "10.9.0.13" {
		t.Errorf("got %s, want 10.9.0.13", got)
	}
	_, err := c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("a"), MinCount: aws.Int32(1), MaxCount: aws.Int32(3)})
	wantCode(t, err, "InsufficientFreeAddressesInSubnet", http.StatusBadRequest)
	if n := len(s.Instances()); n != 4 {
		t.Errorf("got %d instances, want 4", n)
	}
}

func TestLifecycle(t *testing.T) {
	s, c := newClient(t)
	id := *run(t, c, 1).Instances[0].InstanceId
	one := &ec2.DescribeInstancesInput{InstanceIds: []string{id}}
	if got := describe(t, c, one)[id]; got != "running" {
		t.Fatalf("first describe: got %s, want running", got)
	}
	out, err := c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		t.Fatalf("TerminateInstances: %v", err)
	}
	if ch := out.TerminatingInstances[0]; *ch.InstanceId != id || ch.PreviousState.Name != "running" || ch.CurrentState.Name != "shutting-down" || *ch.CurrentState.Code != 32 {
		t.Errorf("got change %+v, want running → shutting-down", ch)
	}
	for _, want := range []string{"shutting-down", "terminated", "terminated"} {
		if got := describe(t, c, one)[id]; got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
	s.SetState(id, "stopped")
	if got := describe(t, c, one)[id]; got != "stopped" {
		t.Errorf("after SetState: got %s, want stopped", got)
	}
	// Unknown ids are refused and change nothing.
	other := *run(t, c, 1).Instances[0].InstanceId
	_, err = c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{other, "i-0000000000000000f"}})
	wantCode(t, err, "InvalidInstanceID.NotFound", http.StatusBadRequest)
	if in, _ := s.Instance(other); in.State != "pending" {
		t.Errorf("got %s, want pending", in.State)
	}
	_, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0000000000000000f"}})
	wantCode(t, err, "InvalidInstanceID.NotFound", http.StatusBadRequest)
}

func TestDescribeFilters(t *testing.T) {
	s, c := newClient(t)
	a := *run(t, c, 1, "memcache:cluster", "c1", "memcache:role", "node").Instances[0].InstanceId
	b := *run(t, c, 1, "memcache:cluster", "c2").Instances[0].InstanceId
	old := s.Add(Instance{Tags: map[string]string{"memcache:cluster": "c1"}})
	if old.ID == "" || old.PrivateIP != "10.0.0.12" || old.State != "running" || old.LaunchTime.IsZero() {
		t.Errorf("Add filled in %+v", old)
	}
	f := func(name string, values ...string) types.Filter {
		return types.Filter{Name: aws.String(name), Values: values}
	}
	for _, tc := range []struct {
		name    string
		filters []types.Filter
		want    []string
	}{
		{"tag", []types.Filter{f("tag:memcache:cluster", "c1")}, []string{a, old.ID}},
		{"tag values or", []types.Filter{f("tag:memcache:cluster", "c1", "c2")}, []string{a, b, old.ID}},
		{"tag-key", []types.Filter{f("tag-key", "memcache:role")}, []string{a}},
		{"filters and", []types.Filter{f("tag:memcache:cluster", "c1"), f("instance-id", old.ID, b)}, []string{old.ID}},
		{"state", []types.Filter{f("instance-state-name", "running")}, []string{a, b, old.ID}},
		{"no match", []types.Filter{f("instance-state-name", "pending")}, nil},
	} {
		got := describe(t, c, &ec2.DescribeInstancesInput{Filters: tc.filters})
		if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, slices.Sorted(slices.Values(tc.want))) {
			t.Errorf("%s: got %v, want %v", tc.name, keys, tc.want)
		}
	}
	_, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{f("vpc-id", "v")}})
	wantCode(t, err, "InvalidParameterValue", http.StatusBadRequest)
}

func TestDescribePaginator(t *testing.T) {
	s, c := newClient(t)
	for range 4 {
		run(t, c, 3)
	}
	var ids, sizes []string
	p := ec2.NewDescribeInstancesPaginator(c, &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatalf("NextPage: %v", err)
		}
		n := 0
		for _, r := range out.Reservations {
			for _, i := range r.Instances {
				ids, n = append(ids, *i.InstanceId), n+1
			}
		}
		sizes = append(sizes, strings.Repeat("x", n))
	}
	var want []string
	for _, in := range s.Instances() {
		want = append(want, in.ID)
	}
	if !slices.Equal(ids, want) || !slices.Equal(sizes, []string{"xxxxx", "xxxxx", "xx"}) {
		t.Errorf("got %v in pages %v, want %v in pages of 5, 5, 2", ids, sizes, want)
	}
	_, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{MaxResults: aws.Int32(4)})
	wantCode(t, err, "InvalidParameterValue", http.StatusBadRequest)
	_, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5), InstanceIds: want[:1]})
	wantCode(t, err, "InvalidParameterCombination", http.StatusBadRequest)
	_, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{NextToken: aws.String("bogus")})
	wantCode(t, err, "InvalidParameterValue", http.StatusBadRequest)
}

func TestCreateTags(t *testing.T) {
	s, c := newClient(t)
	id := *run(t, c, 1, "a", "1").Instances[0].InstanceId
	tag := func(k, v string) []types.Tag { return []types.Tag{{Key: aws.String(k), Value: aws.String(v)}} }
	if _, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: append(tag("a", "2"), tag("b", "3")...)}); err != nil {
		t.Fatalf("CreateTags: %v", err)
	}
	_, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id, "i-0000000000000000f"}, Tags: tag("c", "4")})
	wantCode(t, err, "InvalidInstanceID.NotFound", http.StatusBadRequest)
	_, err = c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: tag("aws:c", "4")})
	wantCode(t, err, "InvalidParameterValue", http.StatusBadRequest)
	if in, _ := s.Instance(id); len(in.Tags) != 2 || in.Tags["a"] != "2" || in.Tags["b"] != "3" {
		t.Errorf("got tags %v, want a=2 b=3", in.Tags)
	}
}

func TestFail(t *testing.T) {
	s, c := newClient(t)
	s.Fail("RunInstances", "RequestLimitExceeded", 2)
	run(t, c, 1) // the SDK retries the throttled attempts
	if n, m := s.Calls("RunInstances"), len(s.Instances()); n != 3 || m != 1 {
		t.Errorf("got %d calls and %d instances, want 3 and 1", n, m)
	}
	s.Fail("TerminateInstances", "UnauthorizedOperation", 1)
	_, err := c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{s.Instances()[0].ID}})
	wantCode(t, err, "UnauthorizedOperation", http.StatusForbidden)
	if n := s.Calls("TerminateInstances"); n != 1 {
		t.Errorf("got %d calls, want 1 (not retried)", n)
	}
	s.Fail("DescribeInstances", "UnauthorizedOperation", -1)
	for range 3 {
		_, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
		wantCode(t, err, "UnauthorizedOperation", http.StatusForbidden)
	}
	s.Fail("DescribeInstances", "", 0)
	describe(t, c, &ec2.DescribeInstancesInput{})
}

func TestClientToken(t *testing.T) {
	s, c := newClient(t)
	launched := make(chan Instance, 10)
	s.SetOnLaunch(func(in Instance) { launched <- in })
	in := &ec2.RunInstancesInput{ImageId: aws.String("a"), MinCount: aws.Int32(2), MaxCount: aws.Int32(2), ClientToken: aws.String("tok")}
	first, err := c.RunInstances(ctx, in)
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	again, err := c.RunInstances(ctx, in)
	if err != nil {
		t.Fatalf("repeated RunInstances: %v", err)
	}
	if *again.ReservationId != *first.ReservationId || *again.Instances[1].InstanceId != *first.Instances[1].InstanceId || len(s.Instances()) != 2 {
		t.Errorf("got reservation %s and %d instances, want %s and 2", *again.ReservationId, len(s.Instances()), *first.ReservationId)
	}
	in.ImageId = aws.String("b")
	_, err = c.RunInstances(ctx, in)
	wantCode(t, err, "IdempotentParameterMismatch", http.StatusBadRequest)
	s.Close() // waits for the callbacks
	close(launched)
	var got []string
	for in := range launched {
		got = append(got, in.ID)
	}
	slices.Sort(got)
	if want := []string{*first.Instances[0].InstanceId, *first.Instances[1].InstanceId}; !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("OnLaunch saw %v, want %v once each", got, want)
	}
}

func TestProtocolErrors(t *testing.T) {
	s := New()
	defer s.Close()
	for _, tc := range []struct{ name, auth, action, code string }{
		{"no Authorization", "", "DescribeInstances", "AuthFailure"},
		{"another service", "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00", "DescribeInstances", "AuthFailure"},
		{"unknown action", "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00", "StopInstances", "InvalidAction"},
	} {
		req, _ := http.NewRequest(http.MethodPost, s.URL(), strings.NewReader("Action="+tc.action+"&Version=2016-11-15"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Code      string `xml:"Errors>Error>Code"`
			RequestID string `xml:"RequestID"`
		}
		err = xml.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		want := http.StatusBadRequest
		if tc.code == "AuthFailure" {
			want = http.StatusUnauthorized
		}
		if err != nil || resp.StatusCode != want || body.Code != tc.code || body.RequestID == "" {
			t.Errorf("%s: got %d %+v (%v), want %d %s", tc.name, resp.StatusCode, body, err, want, tc.code)
		}
	}
	if s2, err := NewOn("127.0.0.1:notaport"); err == nil {
		s2.Close()
		t.Error("NewOn with a bad address: no error")
	}
}
