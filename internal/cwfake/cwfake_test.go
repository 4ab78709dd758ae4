package cwfake

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/smithy-go/encoding/cbor"
)

func newClient(t *testing.T, s *Server, opts ...func(*cloudwatch.Options)) *cloudwatch.Client {
	t.Helper()
	cfg := aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "SECRETTEST", ""),
	}
	return cloudwatch.NewFromConfig(cfg, append([]func(*cloudwatch.Options){func(o *cloudwatch.Options) {
		o.BaseEndpoint = aws.String(s.URL())
	}}, opts...)...)
}

func dims(kv ...string) []types.Dimension {
	var ds []types.Dimension
	for i := 0; i+1 < len(kv); i += 2 {
		ds = append(ds, types.Dimension{Name: aws.String(kv[i]), Value: aws.String(kv[i+1])})
	}
	return ds
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func datum(name string, at time.Duration, v float64, d []types.Dimension) types.MetricDatum {
	return types.MetricDatum{
		MetricName: aws.String(name),
		Dimensions: d,
		Timestamp:  aws.Time(t0.Add(at)),
		Unit:       types.StandardUnitCount,
		Value:      aws.Float64(v),
	}
}

// seed puts, per minute 0..2: minute 0 values 1, 2 (t0+10s, +50s), minute 2
// value 7 (t0+2m5s), under {Pool=p}; and one datum under {Pool=p, Node=n}.
func seed(t *testing.T, c *cloudwatch.Client) {
	t.Helper()
	pool := dims("Pool", "p")
	_, err := c.PutMetricData(context.Background(), &cloudwatch.PutMetricDataInput{
		Namespace: aws.String("Test"),
		MetricData: []types.MetricDatum{
			datum("Hits", 10*time.Second, 1, pool),
			datum("Hits", 50*time.Second, 2, pool),
			datum("Hits", 2*time.Minute+5*time.Second+123*time.Millisecond, 7, pool),
			datum("Hits", 30*time.Second, 100, dims("Node", "n", "Pool", "p")),
		},
	})
	if err != nil {
		t.Fatalf("PutMetricData: %v", err)
	}
}

func stat(id, name, s string, d []types.Dimension) types.MetricDataQuery {
	return types.MetricDataQuery{
		Id: aws.String(id),
		MetricStat: &types.MetricStat{
			Metric: &types.Metric{Namespace: aws.String("Test"), MetricName: aws.String(name), Dimensions: d},
			Period: aws.Int32(60),
			Stat:   aws.String(s),
		},
	}
}

type series struct {
	times  []time.Time
	values []float64
}

// getAll runs GetMetricData through every page and merges results by Id.
func getAll(t *testing.T, c *cloudwatch.Client, in *cloudwatch.GetMetricDataInput) (map[string]series, int) {
	t.Helper()
	out := make(map[string]series)
	pages := 0
	for {
		resp, err := c.GetMetricData(context.Background(), in)
		if err != nil {
			t.Fatalf("GetMetricData: %v", err)
		}
		pages++
		for _, r := range resp.MetricDataResults {
			s := out[*r.Id]
			s.times = append(s.times, r.Timestamps...)
			s.values = append(s.values, r.Values...)
			out[*r.Id] = s
		}
		if resp.NextToken == nil {
			return out, pages
		}
		in.NextToken = resp.NextToken
	}
}

func TestRoundTripThroughSDK(t *testing.T) {
	s := New()
	defer s.Close()
	c := newClient(t, s)
	seed(t, c)
	if got := s.Datums(); got != 4 {
		t.Errorf("Datums() = %d, want 4", got)
	}
	// aws.Config's zero RequestMinCompressSizeBytes makes the SDK gzip every
	// PutMetricData body.
	if got := s.Compressed(); got != 1 {
		t.Errorf("Compressed() = %d, want 1 (the SDK gzips PutMetricData)", got)
	}

	pool := dims("Pool", "p")
	in := &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(t0),
		EndTime:   aws.Time(t0.Add(5 * time.Minute)),
		MetricDataQueries: []types.MetricDataQuery{
			stat("sum", "Hits", "Sum", pool),
			stat("max", "Hits", "Maximum", pool),
			stat("mn", "Hits", "Minimum", pool),
			stat("avg", "Hits", "Average", pool),
			stat("cnt", "Hits", "SampleCount", pool),
			stat("node", "Hits", "Sum", dims("Pool", "p", "Node", "n")),
			stat("none", "Hits", "Sum", dims("Node", "n")),
		},
	}
	got, _ := getAll(t, c, in)
	m2, m0 := t0.Add(2*time.Minute), t0
	for _, tc := range []struct {
		id     string
		times  []time.Time
		values []float64
	}{
		{"sum", []time.Time{m2, m0}, []float64{7, 3}}, // newest first
		{"max", []time.Time{m2, m0}, []float64{7, 2}},
		{"mn", []time.Time{m2, m0}, []float64{7, 1}},
		{"avg", []time.Time{m2, m0}, []float64{7, 1.5}},
		{"cnt", []time.Time{m2, m0}, []float64{1, 2}},
		{"node", []time.Time{m0}, []float64{100}}, // dimension order does not matter
		{"none", nil, nil},                        // matching is exact: {Node} alone is another metric
	} {
		g := got[tc.id]
		if !slices.EqualFunc(g.times, tc.times, time.Time.Equal) || !slices.Equal(g.values, tc.values) {
			t.Errorf("%s: got %v %v, want %v %v", tc.id, g.times, g.values, tc.times, tc.values)
		}
	}

	in.ScanBy = types.ScanByTimestampAscending
	in.NextToken = nil
	got, _ = getAll(t, c, in)
	if g := got["sum"]; !slices.Equal(g.values, []float64{3, 7}) {
		t.Errorf("ascending sum: got %v, want [3 7]", g.values)
	}
}

func TestUncompressedAndTimestampPrecision(t *testing.T) {
	s := New()
	defer s.Close()
	c := newClient(t, s, func(o *cloudwatch.Options) { o.DisableRequestCompression = true })
	seed(t, c)
	if got := s.Compressed(); got != 0 {
		t.Errorf("Compressed() = %d, want 0", got)
	}
	// The datum at t0+2m5.123s must land in minute 2 and nowhere else,
	// also when the query starts on that very millisecond.
	at := t0.Add(2*time.Minute + 5*time.Second + 123*time.Millisecond)
	q := stat("x", "Hits", "Sum", dims("Pool", "p"))
	q.MetricStat.Period = aws.Int32(1)
	got, _ := getAll(t, c, &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(at), EndTime: aws.Time(at.Add(time.Second)),
		MetricDataQueries: []types.MetricDataQuery{q},
	})
	if g := got["x"]; !slices.Equal(g.values, []float64{7}) {
		t.Errorf("got %v, want [7]", g.values)
	}
}

func TestPagination(t *testing.T) {
	s := New()
	defer s.Close()
	c := newClient(t, s)
	pool := dims("Pool", "p")
	var data []types.MetricDatum
	for i := range 7 {
		data = append(data, datum("Gets", time.Duration(i)*time.Minute, float64(i+1), pool))
	}
	if _, err := c.PutMetricData(context.Background(), &cloudwatch.PutMetricDataInput{Namespace: aws.String("Test"), MetricData: data}); err != nil {
		t.Fatal(err)
	}
	s.SetPageSize(3)
	got, pages := getAll(t, c, &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(t0), EndTime: aws.Time(t0.Add(10 * time.Minute)),
		MetricDataQueries: []types.MetricDataQuery{stat("a", "Gets", "Sum", pool), stat("b", "Gets", "Maximum", pool)},
	})
	if pages != 5 { // 14 datapoints, 3 a page
		t.Errorf("pages = %d, want 5", pages)
	}
	want := []float64{7, 6, 5, 4, 3, 2, 1}
	for _, id := range []string{"a", "b"} {
		if g := got[id]; !slices.Equal(g.values, want) {
			t.Errorf("%s: got %v, want %v", id, g.values, want)
		}
	}
}

func TestErrorsReachTheSDKAsTypedErrors(t *testing.T) {
	s := New()
	defer s.Close()
	c := newClient(t, s)
	_, err := c.GetMetricData(context.Background(), &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(t0), EndTime: aws.Time(t0.Add(time.Minute)),
		MetricDataQueries: []types.MetricDataQuery{{Id: aws.String("e"), Expression: aws.String("SUM(METRICS())")}},
	})
	var ipv *types.InvalidParameterValueException
	if !errors.As(err, &ipv) {
		t.Fatalf("got %v (%T), want *types.InvalidParameterValueException", err, err)
	}
	if ipv.ErrorCode() != "InvalidParameterValue" {
		t.Errorf("ErrorCode() = %q, want the query code InvalidParameterValue", ipv.ErrorCode())
	}
	_, err = c.GetMetricData(context.Background(), &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(t0), EndTime: aws.Time(t0.Add(time.Minute)), NextToken: aws.String("bogus"),
		MetricDataQueries: []types.MetricDataQuery{stat("a", "Gets", "Sum", nil)},
	})
	var bad *types.InvalidNextToken
	if !errors.As(err, &bad) {
		t.Errorf("bad token: got %v (%T), want *types.InvalidNextToken", err, err)
	}
}

func TestRawGzipRequest(t *testing.T) {
	s := New()
	defer s.Close()
	body := cbor.Encode(cbor.Map{
		"Namespace": cbor.String("Raw"),
		"MetricData": cbor.List{cbor.Map{
			"MetricName": cbor.String("Bytes"),
			"Timestamp":  &cbor.Tag{ID: 1, Value: cbor.Uint(t0.Unix())},
			"Values":     cbor.List{cbor.Float64(2), cbor.Uint(5)},
			"Counts":     cbor.List{cbor.Float64(3), cbor.Float64(1)},
		}},
	})
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(body)
	zw.Close()
	post := func(body []byte, header map[string]string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, s.URL()+"/service/"+Service+"/operation/PutMetricData", bytes.NewReader(body))
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := post(zb.Bytes(), map[string]string{"Smithy-Protocol": "rpc-v2-cbor", "Content-Type": "application/cbor", "Content-Encoding": "gzip"})
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Smithy-Protocol") != "rpc-v2-cbor" {
		t.Fatalf("gzip PutMetricData: status %d, smithy-protocol %q; want 200, rpc-v2-cbor", resp.StatusCode, resp.Header.Get("Smithy-Protocol"))
	}
	if s.Datums() != 1 || s.Compressed() != 1 {
		t.Errorf("Datums() = %d, Compressed() = %d; want 1, 1", s.Datums(), s.Compressed())
	}
	if resp := post(body, map[string]string{"Content-Type": "application/cbor"}); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("without smithy-protocol: status %d, want 400", resp.StatusCode)
	}

	c := newClient(t, s)
	q := stat("s", "Bytes", "Sum", nil)
	q.MetricStat.Metric.Namespace = aws.String("Raw")
	q2 := stat("n", "Bytes", "SampleCount", nil)
	q2.MetricStat.Metric.Namespace = aws.String("Raw")
	got, _ := getAll(t, c, &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(t0), EndTime: aws.Time(t0.Add(time.Minute)),
		MetricDataQueries: []types.MetricDataQuery{q, q2},
	})
	if g := got["s"]; !slices.Equal(g.values, []float64{11}) { // 2*3 + 5*1
		t.Errorf("sum of Values/Counts: got %v, want [11]", g.values)
	}
	if g := got["n"]; !slices.Equal(g.values, []float64{4}) {
		t.Errorf("sample count: got %v, want [4]", g.values)
	}
}
