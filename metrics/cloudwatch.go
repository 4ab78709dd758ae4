package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/node"
)

// CloudWatchConfig configures the CloudWatch backend, on the nodes
// (Publisher) and on the managers (CloudWatchReader) alike.
type CloudWatchConfig struct {
	// Namespace of the metrics. If blank, it defaults to "Memcache".
	Namespace string
	// Pool is the value of the Pool dimension, which tells pools sharing an
	// account and region apart. If blank, it defaults to "default".
	Pool string
	// Interval is how often a Publisher sends its new samples. If zero, it
	// defaults to 5 s.
	Interval time.Duration
}

func (c CloudWatchConfig) withDefaults() CloudWatchConfig {
	if c.Namespace == "" {
		c.Namespace = "Memcache"
	}
	if c.Pool == "" {
		c.Pool = "default"
	}
	if c.Interval <= 0 {
		c.Interval = 5 * time.Second
	}
	return c
}

// Metric and dimension names of the CloudWatch backend (see the package doc).
const (
	metricHits     = "Hits"
	metricMisses   = "Misses"
	metricGets     = "Gets"
	metricRequests = "Requests"
	metricItems    = "Items"
	metricBytes    = "Bytes"
	dimPool        = "Pool"
	dimNode        = "Node"
)

// cloudWatchPeriod is the period, in seconds, of every GetMetricData query:
// standard-resolution data has one datapoint a minute.
const cloudWatchPeriod = 60

// Limits of the CloudWatch API.
const (
	samplesPerPut  = 150 // 6 datums each: 900 of the 1000 MetricDatum a PutMetricData takes
	queriesPerCall = 500 // MetricDataQueries a GetMetricData takes
)

// PutMetricDataAPI is the part of *cloudwatch.Client a Publisher uses.
type PutMetricDataAPI interface {
	PutMetricData(ctx context.Context, in *cloudwatch.PutMetricDataInput, optFns ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricDataOutput, error)
}

// GetMetricDataAPI is the part of *cloudwatch.Client a CloudWatchReader uses.
type GetMetricDataAPI interface {
	GetMetricData(ctx context.Context, in *cloudwatch.GetMetricDataInput, optFns ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricDataOutput, error)
}

// Publisher sends a node's statistics samples to CloudWatch.
type Publisher struct {
	cfg     CloudWatchConfig
	client  PutMetricDataAPI
	nodeID  string
	samples func(since time.Time) []node.Sample
	log     *slog.Logger

	mu   sync.Mutex // guards last, and serializes Publish
	last time.Time  // End of the newest sample published
}

// NewPublisher returns a Publisher of the samples of node nodeID, which
// samples(since) returns (oldest first, End after since): node.Node.Samples.
// The first round sends every sample the node still holds (up to its 30
// minutes). Call Run to start publishing.
func NewPublisher(cfg CloudWatchConfig, client PutMetricDataAPI, nodeID string, samples func(since time.Time) []node.Sample, log *slog.Logger) *Publisher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher{cfg: cfg.withDefaults(), client: client, nodeID: nodeID, samples: samples, log: log}
}

// Run publishes every Interval until ctx is done, and returns once no
// publication is in flight. Failed publications are logged and retried on
// the next round (the node keeps 30 minutes of samples).
func (p *Publisher) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Send what the node sampled since the last round before it goes.
			flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := p.Publish(flush); err != nil {
				p.log.Warn("final metrics publish failed", "err", err)
			}
			cancel()
			return
		case <-t.C:
			if err := p.Publish(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn("metrics publish failed", "err", err)
			}
		}
	}
}

// Publish sends the samples not yet published (one round of Run).
func (p *Publisher) Publish(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var fresh []node.Sample
	for _, s := range p.samples(p.last) {
		if s.End.After(p.last) {
			fresh = append(fresh, s)
		}
	}
	for len(fresh) > 0 {
		batch := fresh[:min(len(fresh), samplesPerPut)]
		fresh = fresh[len(batch):]
		_, err := p.client.PutMetricData(ctx, &cloudwatch.PutMetricDataInput{
			Namespace:  aws.String(p.cfg.Namespace),
			MetricData: p.datums(batch),
		})
		if err != nil {
			return fmt.Errorf("%w: PutMetricData: %w", ErrBackend, err)
		}
		p.last = batch[len(batch)-1].End
	}
	return nil
}

// datums turns samples into MetricDatum, six per sample.
func (p *Publisher) datums(samples []node.Sample) []types.MetricDatum {
	pool := []types.Dimension{{Name: aws.String(dimPool), Value: aws.String(p.cfg.Pool)}}
	perNode := []types.Dimension{
		{Name: aws.String(dimPool), Value: aws.String(p.cfg.Pool)},
		{Name: aws.String(dimNode), Value: aws.String(p.nodeID)},
	}
	out := make([]types.MetricDatum, 0, 6*len(samples))
	for _, s := range samples {
		at := aws.Time(s.End)
		d := func(name string, v float64, unit types.StandardUnit, dims []types.Dimension) types.MetricDatum {
			return types.MetricDatum{MetricName: aws.String(name), Dimensions: dims, Timestamp: at, Unit: unit, Value: aws.Float64(v)}
		}
		out = append(out,
			d(metricHits, float64(s.Hits), types.StandardUnitCount, pool),
			d(metricMisses, float64(s.Misses), types.StandardUnitCount, pool),
			d(metricGets, float64(s.Gets), types.StandardUnitCount, pool),
			d(metricRequests, float64(s.Requests), types.StandardUnitCount, pool),
			d(metricItems, float64(s.Items), types.StandardUnitCount, perNode),
			d(metricBytes, float64(s.Bytes), types.StandardUnitBytes, perNode),
		)
	}
	return out
}

// CloudWatchReader reads the pool's statistics back from CloudWatch.
type CloudWatchReader struct {
	cfg    CloudWatchConfig
	client GetMetricDataAPI
	pool   func() fsm.State
}

// NewCloudWatchReader returns a Reader of the metrics the pool's Publishers
// send; pool() gives the current members.
func NewCloudWatchReader(cfg CloudWatchConfig, client GetMetricDataAPI, pool func() fsm.State) *CloudWatchReader {
	return &CloudWatchReader{cfg: cfg.withDefaults(), client: client, pool: pool}
}

// datapoint is one value of a GetMetricData result.
type datapoint struct {
	t time.Time
	v float64
}

// fetched is what one read of CloudWatch returns: the pool's summed counts
// per minute, and each member's Maximum occupancy per minute.
type fetched struct {
	counts       map[string][]datapoint // by metric name
	items, bytes []map[int64]float64    // per member index: minute (Unix seconds) -> Maximum
}

// fetch reads [start, end) in 60-s periods for the given members.
func (r *CloudWatchReader) fetch(ctx context.Context, start, end time.Time, members []fsm.Member) (fetched, error) {
	metric := func(name string, dims ...string) *types.Metric {
		m := &types.Metric{Namespace: aws.String(r.cfg.Namespace), MetricName: aws.String(name)}
		for i := 0; i+1 < len(dims); i += 2 {
			m.Dimensions = append(m.Dimensions, types.Dimension{Name: aws.String(dims[i]), Value: aws.String(dims[i+1])})
		}
		return m
	}
	query := func(id string, m *types.Metric, stat string) types.MetricDataQuery {
		return types.MetricDataQuery{
			Id:         aws.String(id),
			ReturnData: aws.Bool(true),
			MetricStat: &types.MetricStat{Metric: m, Period: aws.Int32(cloudWatchPeriod), Stat: aws.String(stat)},
		}
	}
	counts := []string{metricHits, metricMisses, metricGets, metricRequests}
	var qs []types.MetricDataQuery
	for i, name := range counts {
		qs = append(qs, query("c"+strconv.Itoa(i), metric(name, dimPool, r.cfg.Pool), "Sum"))
	}
	for i, m := range members {
		qs = append(qs,
			query("i"+strconv.Itoa(i), metric(metricItems, dimPool, r.cfg.Pool, dimNode, m.ID), "Maximum"),
			query("b"+strconv.Itoa(i), metric(metricBytes, dimPool, r.cfg.Pool, dimNode, m.ID), "Maximum"))
	}

	byID := make(map[string][]datapoint, len(qs))
	for len(qs) > 0 {
		chunk := qs[:min(len(qs), queriesPerCall)]
		qs = qs[len(chunk):]
		in := &cloudwatch.GetMetricDataInput{
			StartTime:         aws.Time(start),
			EndTime:           aws.Time(end),
			MetricDataQueries: chunk,
			ScanBy:            types.ScanByTimestampAscending,
		}
		for {
			out, err := r.client.GetMetricData(ctx, in)
			if err != nil {
				return fetched{}, fmt.Errorf("%w: GetMetricData: %w", ErrBackend, err)
			}
			for _, res := range out.MetricDataResults {
				switch res.StatusCode {
				case types.StatusCodeForbidden, types.StatusCodeInternalError:
					return fetched{}, fmt.Errorf("%w: GetMetricData: query %s: status %s", ErrBackend, aws.ToString(res.Id), res.StatusCode)
				}
				id := aws.ToString(res.Id)
				for j := range min(len(res.Timestamps), len(res.Values)) {
					byID[id] = append(byID[id], datapoint{res.Timestamps[j], res.Values[j]})
				}
			}
			if aws.ToString(out.NextToken) == "" {
				break
			}
			in.NextToken = out.NextToken
		}
	}

	f := fetched{
		counts: make(map[string][]datapoint, len(counts)),
		items:  make([]map[int64]float64, len(members)),
		bytes:  make([]map[int64]float64, len(members)),
	}
	for i, name := range counts {
		f.counts[name] = byID["c"+strconv.Itoa(i)]
	}
	perMinute := func(dps []datapoint) map[int64]float64 {
		m := make(map[int64]float64, len(dps))
		for _, dp := range dps {
			m[dp.t.Unix()] = dp.v
		}
		return m
	}
	for i := range members {
		f.items[i] = perMinute(byID["i"+strconv.Itoa(i)])
		f.bytes[i] = perMinute(byID["b"+strconv.Itoa(i)])
	}
	return f, nil
}

// count converts a CloudWatch Sum to a count.
func count(v float64) uint64 {
	if !(v > 0) {
		return 0
	}
	return uint64(math.Round(v))
}

// History implements Reader (see the package doc for how CloudWatch is read).
func (r *CloudWatchReader) History(ctx context.Context, now time.Time, n int) ([]Point, error) {
	if err := checkMinutes(n); err != nil {
		return nil, err
	}
	st := r.pool()
	members := st.Members
	m := newMinutes(now, n)
	f, err := r.fetch(ctx, m.first, m.end(), members)
	if err != nil {
		return nil, err
	}
	for name, dps := range f.counts {
		for _, dp := range dps {
			i, ok := m.index(dp.t)
			if !ok {
				continue
			}
			c := &m.counts[i]
			switch name {
			case metricHits:
				c.Hits += count(dp.v)
			case metricMisses:
				c.Misses += count(dp.v)
			case metricGets:
				c.Gets += count(dp.v)
			case metricRequests:
				c.Requests += count(dp.v)
			}
		}
	}
	for j, mem := range members {
		for i := range n {
			minute := m.first.Add(time.Duration(i) * time.Minute).Unix()
			items, okI := f.items[j][minute]
			bytes, okB := f.bytes[j][minute]
			if okI || okB {
				m.setOccupancy(i, mem.ID, occupancy{int64(math.Round(items)), int64(math.Round(bytes))})
			}
		}
	}
	m.nodesFromPresence()
	m.nodes[n-1], m.known[n-1] = len(members), true
	return m.points(memberSet(st)), nil
}

// Totals implements Reader. The window starts at the beginning of the
// minute containing now-window (CloudWatch's granularity); Items and Bytes
// are each current member's Maximum in its newest minute with data, and
// Nodes the number of current members with data in the window.
func (r *CloudWatchReader) Totals(ctx context.Context, now time.Time, window time.Duration) (Totals, error) {
	if err := checkWindow(window); err != nil {
		return Totals{}, err
	}
	members := r.pool().Members
	start := now.Add(-window).UTC().Truncate(time.Minute)
	end := now.UTC().Truncate(time.Minute).Add(time.Minute)
	f, err := r.fetch(ctx, start, end, members)
	if err != nil {
		return Totals{}, err
	}
	var t Totals
	for name, dps := range f.counts {
		var sum uint64
		for _, dp := range dps {
			sum += count(dp.v)
		}
		switch name {
		case metricHits:
			t.Hits = sum
		case metricMisses:
			t.Misses = sum
		case metricGets:
			t.Gets = sum
		case metricRequests:
			t.Requests = sum
		}
	}
	for j := range members {
		newest := int64(math.MinInt64)
		for minute := range f.items[j] {
			newest = max(newest, minute)
		}
		for minute := range f.bytes[j] {
			newest = max(newest, minute)
		}
		if newest == math.MinInt64 {
			continue
		}
		t.Items += int64(math.Round(f.items[j][newest]))
		t.Bytes += int64(math.Round(f.bytes[j][newest]))
		t.Nodes++
	}
	return t, nil
}
