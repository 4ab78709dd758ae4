package metrics

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/memcache/memcache/internal/cwfake"
	"github.com/memcache/memcache/node"
)

// newCloudWatch starts a fake CloudWatch and returns a real SDK client of it.
// With aws.Config's zero RequestMinCompressSizeBytes the SDK gzips every
// PutMetricData body.
func newCloudWatch(t *testing.T) (*cwfake.Server, *cloudwatch.Client) {
	t.Helper()
	fake := cwfake.New()
	t.Cleanup(fake.Close)
	client := cloudwatch.NewFromConfig(aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "SECRETTEST", ""),
	}, func(o *cloudwatch.Options) { o.BaseEndpoint = aws.String(fake.URL()) })
	return fake, client
}

func TestCloudWatchRoundTrip(t *testing.T) {
	p := newTestPool(t)
	fake, client := newCloudWatch(t)
	cfg := CloudWatchConfig{}
	var pubs []*Publisher
	for _, n := range []*statsNode{p.a, p.b, p.c} {
		pubs = append(pubs, NewPublisher(cfg, client, n.id, n.upTo, nil))
	}
	publish := func(at time.Time) {
		t.Helper()
		p.clk.Set(at)
		for _, pub := range pubs {
			if err := pub.Publish(context.Background()); err != nil {
				t.Fatalf("Publish at %s: %v", at.Format(time.TimeOnly), err)
			}
		}
	}
	publish(at(2, 0))
	publish(at(4, 25))
	publish(at(4, 25)) // nothing new
	total := len(samplesA) + len(samplesB) + len(samplesC)
	if got := fake.Datums(); got != 6*total {
		t.Errorf("Datums() = %d, want 6 per sample, %d (each sample published once)", got, 6*total)
	}
	if fake.Compressed() == 0 {
		t.Error("no PutMetricData body arrived gzip-compressed")
	}

	e := p.embedded(EmbeddedConfig{})
	scrapeAll(t, p, e)
	embedded, _ := e.History(context.Background(), now, 5)
	if d := diffPoints(embedded, wantHistory()); d != "" {
		t.Fatal("embedded History:", d)
	}
	// CloudWatch keeps no membership history: Nodes is the number of
	// members that published in the minute (c did not in 12:01, nobody in
	// 12:02), and the pool size for the minute containing now.
	wantCW := slices.Clone(embedded)
	for i, n := range []int{3, 2, 2, 3, 3} {
		wantCW[i].Nodes = n
	}

	r := NewCloudWatchReader(cfg, client, p.pool)
	for _, page := range []int{0, 4} {
		fake.SetPageSize(page) // 4: GetMetricData answers in many pages
		got, err := r.History(context.Background(), now, 5)
		if err != nil {
			t.Fatal(err)
		}
		if d := diffPoints(got, wantCW); d != "" {
			t.Errorf("page size %d: History: %s", page, d)
		}
		for _, tc := range wantTotals {
			got, err := r.Totals(context.Background(), now, tc.window)
			if err != nil {
				t.Fatal(err)
			}
			emb, _ := e.Totals(context.Background(), now, tc.window)
			if got != tc.want || got != emb {
				t.Errorf("page size %d: Totals(%s): got %+v, want %+v (embedded %+v)", page, tc.window, got, tc.want, emb)
			}
		}
	}
}

// recorder is a PutMetricDataAPI that keeps what it is sent, and can fail.
type recorder struct {
	mu    sync.Mutex // guards the fields below
	calls []*cloudwatch.PutMetricDataInput
	fail  int // fail this many calls first
}

func (r *recorder) PutMetricData(_ context.Context, in *cloudwatch.PutMetricDataInput, _ ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricDataOutput, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return nil, errors.New("throttled")
	}
	r.calls = append(r.calls, in)
	return &cloudwatch.PutMetricDataOutput{}, nil
}

func TestPublisherDatums(t *testing.T) {
	rec := &recorder{fail: 1}
	var samples []node.Sample
	for i := range 400 {
		samples = append(samples, smp(at(0, 5*i), uint64(i), 1, 2, int64(i), int64(10*i)))
	}
	source := func(since time.Time) []node.Sample {
		var out []node.Sample
		for _, s := range samples {
			if s.End.After(since) {
				out = append(out, s)
			}
		}
		return out
	}
	p := NewPublisher(CloudWatchConfig{Namespace: "NS", Pool: "blue"}, rec, "n7", source, nil)
	if err := p.Publish(context.Background()); !errors.Is(err, ErrBackend) {
		t.Fatalf("Publish with a failing client: got %v, want ErrBackend", err)
	}
	if err := p.Publish(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Nothing was lost to the failure, nothing is sent twice, and no call
	// exceeds CloudWatch's 1000 datums.
	var sizes []int
	for _, c := range rec.calls {
		sizes = append(sizes, len(c.MetricData))
	}
	if !slices.Equal(sizes, []int{900, 900, 600}) {
		t.Errorf("datums per call: %v, want [900 900 600]", sizes)
	}
	if err := p.Publish(context.Background()); err != nil || len(rec.calls) != 3 {
		t.Errorf("a third Publish sent %d calls (err %v), want none", len(rec.calls)-3, err)
	}

	in := rec.calls[0]
	if aws.ToString(in.Namespace) != "NS" {
		t.Errorf("Namespace %q, want NS", aws.ToString(in.Namespace))
	}
	want := map[string]struct {
		unit  types.StandardUnit
		dims  string
		value float64
	}{
		"Hits":     {types.StandardUnitCount, "Pool=blue", 1},
		"Misses":   {types.StandardUnitCount, "Pool=blue", 1},
		"Gets":     {types.StandardUnitCount, "Pool=blue", 2},
		"Requests": {types.StandardUnitCount, "Pool=blue", 2},
		"Items":    {types.StandardUnitCount, "Pool=blue,Node=n7", 1},
		"Bytes":    {types.StandardUnitBytes, "Pool=blue,Node=n7", 10},
	}
	for _, d := range in.MetricData[6:12] { // the second sample
		name := aws.ToString(d.MetricName)
		w, ok := want[name]
		if !ok {
			t.Errorf("unexpected metric %q", name)
			continue
		}
		var dims []string
		for _, dim := range d.Dimensions {
			dims = append(dims, aws.ToString(dim.Name)+"="+aws.ToString(dim.Value))
		}
		if got := strings.Join(dims, ","); d.Unit != w.unit || got != w.dims || aws.ToFloat64(d.Value) != w.value || !aws.ToTime(d.Timestamp).Equal(samples[1].End) {
			t.Errorf("%s: unit %s dims %s value %v at %s; want %s %s %v at %s", name, d.Unit, got, aws.ToFloat64(d.Value), aws.ToTime(d.Timestamp), w.unit, w.dims, w.value, samples[1].End)
		}
	}
}

func TestPublisherRunStops(t *testing.T) {
	rec := &recorder{}
	var (
		mu    sync.Mutex
		calls int
	)
	source := func(since time.Time) []node.Sample {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return []node.Sample{smp(at(0, 5), 1, 0, 1, 1, 1)}
	}
	p := NewPublisher(CloudWatchConfig{Interval: 10 * time.Millisecond}, rec, "n", source, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	poll(t, "three rounds", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls >= 3
	})
	cancel()
	waitDone(t, "Publisher.Run", done)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.calls) != 1 {
		t.Errorf("%d PutMetricData calls, want 1 (the sample is sent once)", len(rec.calls))
	}
}

type failingGet struct{}

func (failingGet) GetMetricData(context.Context, *cloudwatch.GetMetricDataInput, ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricDataOutput, error) {
	return nil, errors.New("access denied")
}

func TestCloudWatchReaderErrors(t *testing.T) {
	r := NewCloudWatchReader(CloudWatchConfig{}, failingGet{}, poolOf())
	if _, err := r.History(context.Background(), now, 30); !errors.Is(err, ErrBackend) {
		t.Errorf("History: got %v, want ErrBackend", err)
	}
	if _, err := r.Totals(context.Background(), now, time.Minute); !errors.Is(err, ErrBackend) {
		t.Errorf("Totals: got %v, want ErrBackend", err)
	}
	if _, err := r.History(context.Background(), now, 0); !errors.Is(err, ErrBadRange) {
		t.Errorf("History(0): got %v, want ErrBadRange", err)
	}
}

// TestCloudWatchWithRealNodes publishes real nodes' samples and checks that
// CloudWatch and the embedded backend agree.
func TestCloudWatchWithRealNodes(t *testing.T) {
	n1, m1 := startNode(t, "n1")
	n2, m2 := startNode(t, "n2")
	drive(t, m1, "hello")
	drive(t, m2, "bonjour!")
	fake, client := newCloudWatch(t)
	pubs := []*Publisher{
		NewPublisher(CloudWatchConfig{}, client, "n1", n1.Samples, nil),
		NewPublisher(CloudWatchConfig{}, client, "n2", n2.Samples, nil),
	}
	pool := poolOf(m1, m2)
	r := NewCloudWatchReader(CloudWatchConfig{}, client, pool)
	want := Totals{Hits: 2, Misses: 4, Gets: 6, Requests: 8, Items: 2, Bytes: 13, Nodes: 2}
	poll(t, "the published totals", func() bool {
		for _, p := range pubs {
			if err := p.Publish(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		got, err := r.Totals(context.Background(), time.Now(), 5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return got == want
	})
	if fake.Datums() == 0 || fake.Compressed() == 0 {
		t.Errorf("Datums() = %d, Compressed() = %d; want both > 0", fake.Datums(), fake.Compressed())
	}
	h, err := r.History(context.Background(), time.Now(), 3)
	if err != nil {
		t.Fatal(err)
	}
	var gets uint64
	for _, pt := range h {
		gets += pt.Gets
	}
	if gets != 6 || h[2].Nodes != 2 {
		t.Errorf("History: %d gets, newest Nodes %d; want 6, 2", gets, h[2].Nodes)
	}
}

func TestPublisherFlushesOnStop(t *testing.T) {
	rec := &recorder{}
	var (
		mu      sync.Mutex
		samples = []node.Sample{smp(at(0, 5), 1, 0, 1, 1, 1)}
	)
	source := func(since time.Time) []node.Sample {
		mu.Lock()
		defer mu.Unlock()
		var out []node.Sample
		for _, s := range samples {
			if s.End.After(since) {
				out = append(out, s)
			}
		}
		return out
	}
	p := NewPublisher(CloudWatchConfig{Interval: time.Hour}, rec, "n", source, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	// With an hour between rounds, only the flush on stop can send them.
	cancel()
	waitDone(t, "Publisher.Run", done)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.calls) != 1 {
		t.Errorf("%d PutMetricData calls after stop, want 1 (the final flush)", len(rec.calls))
	}
}
