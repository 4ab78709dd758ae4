// Package cwfake is an in-process CloudWatch server for tests that speaks the
// SDK's own wire protocol.
//
// aws-sdk-go-v2/service/cloudwatch (v1.75.x) talks Smithy RPC v2 CBOR: every
// call is POST /service/GraniteServiceVersion20100801/operation/<Op> with the
// header "smithy-protocol: rpc-v2-cbor", a CBOR body (PutMetricData bodies may
// be gzip-compressed, Content-Encoding: gzip) and a CBOR answer carrying the
// same header. Structures are CBOR maps keyed by member name; timestamps are
// tag 1 around epoch seconds. Errors are a CBOR map {"__type", "message"}
// with, because CloudWatch is awsQueryCompatible, the query error code in
// X-Amzn-Query-Error ("InvalidParameterValue;Sender"), which is what the SDK
// turns into *types.InvalidParameterValueException and friends.
//
// The server implements PutMetricData (every datum is stored: Value,
// Values/Counts or StatisticValues) and GetMetricData for MetricStat queries
// (Sum, Maximum, Minimum, Average, SampleCount; Unit filter; exact dimension
// matching; periods aligned on StartTime; newest first unless ScanBy says
// TimestampAscending; NextToken pagination when SetPageSize is used or
// MaxDatapoints is given). Metric math expressions are refused.
package cwfake

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/smithy-go/encoding/cbor"
)

// Service is the Smithy service name in the operation paths.
const Service = "GraniteServiceVersion20100801"

// maxBody bounds a request body after decompression (CloudWatch's own limit
// for PutMetricData is 1 MB).
const maxBody = 4 << 20

// Server is a fake CloudWatch. Its zero value is not usable; call New.
type Server struct {
	srv *httptest.Server

	mu         sync.Mutex // guards the fields below
	series     map[seriesKey][]datapoint
	datums     int
	compressed int
	pageSize   int
}

type seriesKey struct {
	namespace, name string
	dims            string // canonical: "name=value" sorted, joined by "\x00"
}

// datapoint is one datum as CloudWatch aggregates it: a statistic set.
type datapoint struct {
	t                    time.Time
	unit                 string
	sum, min, max, count float64
}

// New starts a server on a loopback port. Close it when done.
func New() *Server {
	s := &Server{series: make(map[seriesKey][]datapoint)}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	return s
}

// URL is the base URL to give the SDK client as BaseEndpoint.
func (s *Server) URL() string { return s.srv.URL }

// Close shuts the server down, waiting for requests in flight.
func (s *Server) Close() { s.srv.Close() }

// Datums is how many MetricDatum entries PutMetricData has stored.
func (s *Server) Datums() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.datums
}

// Compressed is how many requests arrived with a gzip-compressed body.
func (s *Server) Compressed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compressed
}

// SetPageSize makes GetMetricData answer at most n datapoints per response
// (then NextToken), so that clients' pagination is exercised. n <= 0 means
// no limit beyond the request's MaxDatapoints.
func (s *Server) SetPageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageSize = n
}

// apiError is an error the server answers with.
type apiError struct {
	status    int
	shape     string // Smithy shape name, the "__type"
	queryCode string // awsQueryError code, for X-Amzn-Query-Error
	msg       string
}

func (e *apiError) Error() string { return e.shape + ": " + e.msg }

func invalidValue(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, "InvalidParameterValueException", "InvalidParameterValue", fmt.Sprintf(format, args...)}
}

func missing(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, "MissingRequiredParameterException", "MissingParameter", fmt.Sprintf(format, args...)}
}

var opPath = regexp.MustCompile(`^/service/` + Service + `/operation/([A-Za-z]+)$`)

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	m := opPath.FindStringSubmatch(r.URL.Path)
	if r.Method != http.MethodPost || m == nil {
		writeError(w, &apiError{http.StatusNotFound, "UnknownOperationException", "UnknownOperation", r.Method + " " + r.URL.Path})
		return
	}
	if p := r.Header.Get("Smithy-Protocol"); p != "rpc-v2-cbor" {
		writeError(w, &apiError{http.StatusBadRequest, "ValidationException", "ValidationError", fmt.Sprintf("smithy-protocol header is %q, want rpc-v2-cbor", p)})
		return
	}
	in, err := s.readBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	var out cbor.Map
	switch m[1] {
	case "PutMetricData":
		out, err = s.putMetricData(in)
	case "GetMetricData":
		out, err = s.getMetricData(in)
	default:
		err = &apiError{http.StatusBadRequest, "UnknownOperationException", "UnknownOperation", "operation " + m[1] + " is not implemented by cwfake"}
	}
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Smithy-Protocol", "rpc-v2-cbor")
	w.Header().Set("Content-Type", "application/cbor")
	w.Write(cbor.Encode(out))
}

// readBody reads, inflates if needed, and decodes the CBOR request body into
// a map (an empty body is an empty input structure).
func (s *Server) readBody(r *http.Request) (cbor.Map, error) {
	var body io.Reader = r.Body
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, &apiError{http.StatusBadRequest, "InvalidParameterValueException", "InvalidParameterValue", "gzip body: " + err.Error()}
		}
		defer zr.Close()
		body = zr
		s.mu.Lock()
		s.compressed++
		s.mu.Unlock()
	default:
		return nil, invalidValue("unsupported Content-Encoding %q", enc)
	}
	p, err := io.ReadAll(io.LimitReader(body, maxBody+1))
	if err != nil {
		return nil, invalidValue("reading body: %v", err)
	}
	if len(p) > maxBody {
		return nil, &apiError{http.StatusRequestEntityTooLarge, "InvalidParameterValueException", "InvalidParameterValue", "request body too large"}
	}
	if len(p) == 0 {
		return cbor.Map{}, nil
	}
	v, err := cbor.Decode(p)
	if err != nil {
		return nil, invalidValue("body is not CBOR: %v", err)
	}
	mv, ok := v.(cbor.Map)
	if !ok {
		return nil, invalidValue("body is a %T, want a CBOR map", v)
	}
	return mv, nil
}

func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{http.StatusInternalServerError, "InternalServiceFault", "InternalServiceError", err.Error()}
	}
	fault := "Sender"
	if ae.status >= 500 {
		fault = "Receiver"
	}
	w.Header().Set("Smithy-Protocol", "rpc-v2-cbor")
	w.Header().Set("Content-Type", "application/cbor")
	w.Header().Set("X-Amzn-Query-Error", ae.queryCode+";"+fault)
	w.WriteHeader(ae.status)
	w.Write(cbor.Encode(cbor.Map{
		"__type":  cbor.String("com.amazonaws.cloudwatch#" + ae.shape),
		"message": cbor.String(ae.msg),
	}))
}

// --- PutMetricData ---

func (s *Server) putMetricData(in cbor.Map) (cbor.Map, error) {
	ns, err := str(in, "Namespace")
	if err != nil {
		return nil, err
	}
	if ns == "" {
		return nil, missing("Namespace is required")
	}
	data, err := list(in, "MetricData")
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, missing("MetricData is required")
	}
	now := time.Now()
	type stored struct {
		key seriesKey
		dp  []datapoint
	}
	batch := make([]stored, 0, len(data))
	for i, v := range data {
		d, ok := v.(cbor.Map)
		if !ok {
			return nil, invalidValue("MetricData[%d] is a %T, want a map", i, v)
		}
		key, dps, err := parseDatum(ns, d, now)
		if err != nil {
			return nil, invalidValue("MetricData[%d]: %v", i, err)
		}
		batch = append(batch, stored{key, dps})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range batch {
		s.series[b.key] = append(s.series[b.key], b.dp...)
	}
	s.datums += len(batch)
	return cbor.Map{}, nil
}

func parseDatum(ns string, d cbor.Map, now time.Time) (seriesKey, []datapoint, error) {
	name, err := str(d, "MetricName")
	if err != nil {
		return seriesKey{}, nil, err
	}
	if name == "" {
		return seriesKey{}, nil, errors.New("MetricName is required")
	}
	dims, err := dimensions(d)
	if err != nil {
		return seriesKey{}, nil, err
	}
	key := seriesKey{namespace: ns, name: name, dims: dims}
	t := now
	if v, ok := d["Timestamp"]; ok {
		if t, err = timestamp(v); err != nil {
			return key, nil, fmt.Errorf("Timestamp: %v", err)
		}
	}
	unit, err := str(d, "Unit")
	if err != nil {
		return key, nil, err
	}
	if unit == "" {
		unit = "None"
	}
	var dps []datapoint
	if v, ok := d["Value"]; ok {
		f, err := cbor.AsFloat64(v)
		if err != nil {
			return key, nil, fmt.Errorf("Value: %v", err)
		}
		dps = append(dps, datapoint{t: t, unit: unit, sum: f, min: f, max: f, count: 1})
	}
	if _, ok := d["Values"]; ok {
		values, err := floats(d, "Values")
		if err != nil {
			return key, nil, err
		}
		counts, err := floats(d, "Counts")
		if err != nil {
			return key, nil, err
		}
		if counts != nil && len(counts) != len(values) {
			return key, nil, errors.New("Counts must be as long as Values")
		}
		for i, f := range values {
			c := 1.0
			if counts != nil {
				c = counts[i]
			}
			dps = append(dps, datapoint{t: t, unit: unit, sum: f * c, min: f, max: f, count: c})
		}
	}
	if v, ok := d["StatisticValues"]; ok {
		sv, ok := v.(cbor.Map)
		if !ok {
			return key, nil, errors.New("StatisticValues is not a map")
		}
		var fs [4]float64
		for i, n := range []string{"Sum", "Minimum", "Maximum", "SampleCount"} {
			f, err := cbor.AsFloat64(sv[n])
			if err != nil {
				return key, nil, fmt.Errorf("StatisticValues.%s: %v", n, err)
			}
			fs[i] = f
		}
		dps = append(dps, datapoint{t: t, unit: unit, sum: fs[0], min: fs[1], max: fs[2], count: fs[3]})
	}
	if len(dps) == 0 {
		return key, nil, errors.New("one of Value, Values or StatisticValues is required")
	}
	return key, dps, nil
}

// --- GetMetricData ---

type query struct {
	id, label, stat, unit string
	key                   seriesKey
	period                time.Duration
	returnData            bool
}

type result struct {
	q      query
	times  []time.Time
	values []float64
}

func (s *Server) getMetricData(in cbor.Map) (cbor.Map, error) {
	start, err := timeField(in, "StartTime")
	if err != nil {
		return nil, err
	}
	end, err := timeField(in, "EndTime")
	if err != nil {
		return nil, err
	}
	if !end.After(start) {
		return nil, invalidValue("EndTime %s must be after StartTime %s", end, start)
	}
	scanBy, err := str(in, "ScanBy")
	if err != nil {
		return nil, err
	}
	if scanBy != "" && scanBy != "TimestampDescending" && scanBy != "TimestampAscending" {
		return nil, invalidValue("ScanBy %q", scanBy)
	}
	maxPoints := 100800
	if v, ok := in["MaxDatapoints"]; ok {
		n, err := cbor.AsInt64(v)
		if err != nil || n <= 0 {
			return nil, invalidValue("MaxDatapoints must be a positive integer")
		}
		maxPoints = int(n)
	}
	offset := 0
	if tok, err := str(in, "NextToken"); err != nil {
		return nil, err
	} else if tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 {
			return nil, &apiError{http.StatusBadRequest, "InvalidNextToken", "InvalidNextToken", "NextToken " + tok}
		}
		offset = n
	}
	qs, err := queries(in)
	if err != nil {
		return nil, err
	}

	s.mu.Lock()
	if s.pageSize > 0 && s.pageSize < maxPoints {
		maxPoints = s.pageSize
	}
	results := make([]result, 0, len(qs))
	for _, q := range qs {
		if q.returnData {
			results = append(results, s.evaluate(q, start, end, scanBy == "TimestampAscending"))
		}
	}
	s.mu.Unlock()

	// Page over the datapoints of all results, in query order; the token is
	// the number of datapoints already returned.
	var (
		out   cbor.List
		skip  = offset
		room  = maxPoints
		total = 0
	)
	for _, r := range results {
		total += len(r.times)
		from := min(skip, len(r.times))
		skip -= from
		to := from + min(room, len(r.times)-from)
		room -= to - from
		status := "Complete"
		if to < len(r.times) {
			status = "PartialData"
		}
		ts := make(cbor.List, 0, to-from)
		vs := make(cbor.List, 0, to-from)
		for i := from; i < to; i++ {
			ts = append(ts, &cbor.Tag{ID: 1, Value: cbor.Float64(float64(r.times[i].UnixMilli()) / 1e3)})
			vs = append(vs, cbor.Float64(r.values[i]))
		}
		out = append(out, cbor.Map{
			"Id":         cbor.String(r.q.id),
			"Label":      cbor.String(r.q.label),
			"StatusCode": cbor.String(status),
			"Timestamps": ts,
			"Values":     vs,
			"Messages":   cbor.List{},
		})
	}
	resp := cbor.Map{"MetricDataResults": out, "Messages": cbor.List{}}
	if next := offset + maxPoints; next < total {
		resp["NextToken"] = cbor.String(strconv.Itoa(next))
	}
	return resp, nil
}

var idPattern = regexp.MustCompile(`^[a-z][a-zA-Z0-9_]*$`)

func queries(in cbor.Map) ([]query, error) {
	raw, err := list(in, "MetricDataQueries")
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, missing("MetricDataQueries is required")
	}
	if len(raw) > 500 {
		return nil, invalidValue("at most 500 MetricDataQueries, got %d", len(raw))
	}
	seen := make(map[string]bool, len(raw))
	qs := make([]query, 0, len(raw))
	for i, v := range raw {
		m, ok := v.(cbor.Map)
		if !ok {
			return nil, invalidValue("MetricDataQueries[%d] is a %T", i, v)
		}
		var q query
		if q.id, err = str(m, "Id"); err != nil {
			return nil, err
		}
		if !idPattern.MatchString(q.id) {
			return nil, invalidValue("MetricDataQueries[%d].Id %q must match %s", i, q.id, idPattern)
		}
		if seen[q.id] {
			return nil, invalidValue("duplicate Id %q", q.id)
		}
		seen[q.id] = true
		if _, ok := m["Expression"]; ok {
			return nil, invalidValue("query %s: metric math expressions are not supported by cwfake", q.id)
		}
		q.returnData = true
		if b, ok := m["ReturnData"].(cbor.Bool); ok {
			q.returnData = bool(b)
		}
		ms, ok := m["MetricStat"].(cbor.Map)
		if !ok {
			return nil, missing("query %s: MetricStat is required", q.id)
		}
		metric, ok := ms["Metric"].(cbor.Map)
		if !ok {
			return nil, missing("query %s: MetricStat.Metric is required", q.id)
		}
		if q.key.namespace, err = str(metric, "Namespace"); err != nil {
			return nil, err
		}
		if q.key.name, err = str(metric, "MetricName"); err != nil {
			return nil, err
		}
		if q.key.dims, err = dimensions(metric); err != nil {
			return nil, invalidValue("query %s: %v", q.id, err)
		}
		if q.stat, err = str(ms, "Stat"); err != nil {
			return nil, err
		}
		switch q.stat {
		case "Sum", "Maximum", "Minimum", "Average", "SampleCount":
		default:
			return nil, invalidValue("query %s: Stat %q is not supported by cwfake", q.id, q.stat)
		}
		if q.unit, err = str(ms, "Unit"); err != nil {
			return nil, err
		}
		p, err := cbor.AsInt64(ms["Period"])
		if err != nil || !(p == 1 || p == 5 || p == 10 || p == 20 || p == 30 || (p > 0 && p%60 == 0)) {
			return nil, invalidValue("query %s: Period must be 1, 5, 10, 20, 30 or a multiple of 60", q.id)
		}
		q.period = time.Duration(p) * time.Second
		if q.label, err = str(m, "Label"); err != nil {
			return nil, err
		}
		if q.label == "" {
			q.label = q.key.name
		}
		qs = append(qs, q)
	}
	return qs, nil
}

// evaluate aggregates q's series over periods aligned on start, returning only
// the periods with data, newest first unless ascending. Callers hold s.mu.
func (s *Server) evaluate(q query, start, end time.Time, ascending bool) result {
	type agg struct{ sum, min, max, count float64 }
	buckets := make(map[int64]*agg)
	for _, dp := range s.series[q.key] {
		if dp.t.Before(start) || !dp.t.Before(end) {
			continue
		}
		if q.unit != "" && dp.unit != q.unit {
			continue
		}
		k := int64(dp.t.Sub(start) / q.period)
		a := buckets[k]
		if a == nil {
			a = &agg{min: math.Inf(1), max: math.Inf(-1)}
			buckets[k] = a
		}
		a.sum += dp.sum
		a.count += dp.count
		a.min = math.Min(a.min, dp.min)
		a.max = math.Max(a.max, dp.max)
	}
	keys := make([]int64, 0, len(buckets))
	for k := range buckets {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !ascending {
		slices.Reverse(keys)
	}
	r := result{q: q, times: make([]time.Time, 0, len(keys)), values: make([]float64, 0, len(keys))}
	for _, k := range keys {
		a := buckets[k]
		var v float64
		switch q.stat {
		case "Sum":
			v = a.sum
		case "Maximum":
			v = a.max
		case "Minimum":
			v = a.min
		case "SampleCount":
			v = a.count
		case "Average":
			v = a.sum / a.count
		}
		r.times = append(r.times, start.Add(time.Duration(k)*q.period).UTC())
		r.values = append(r.values, v)
	}
	return r
}

// --- CBOR helpers ---

func str(m cbor.Map, field string) (string, error) {
	v, ok := m[field]
	if !ok {
		return "", nil
	}
	if _, isNil := v.(*cbor.Nil); isNil {
		return "", nil
	}
	s, ok := v.(cbor.String)
	if !ok {
		return "", invalidValue("%s is a %T, want a string", field, v)
	}
	return string(s), nil
}

func list(m cbor.Map, field string) (cbor.List, error) {
	v, ok := m[field]
	if !ok {
		return nil, nil
	}
	l, ok := v.(cbor.List)
	if !ok {
		return nil, invalidValue("%s is a %T, want a list", field, v)
	}
	return l, nil
}

func floats(m cbor.Map, field string) ([]float64, error) {
	l, err := list(m, field)
	if err != nil || l == nil {
		return nil, err
	}
	out := make([]float64, len(l))
	for i, v := range l {
		f, err := cbor.AsFloat64(v)
		if err != nil {
			return nil, invalidValue("%s[%d]: %v", field, i, err)
		}
		out[i] = f
	}
	return out, nil
}

// timestamp reads a tag-1 epoch-seconds timestamp. The SDK writes float64
// seconds with millisecond precision; rounding (not truncating) to the
// millisecond gives back exactly what the client had.
func timestamp(v cbor.Value) (time.Time, error) {
	tag, ok := v.(*cbor.Tag)
	if !ok || tag.ID != 1 {
		return time.Time{}, fmt.Errorf("want CBOR tag 1 (epoch seconds), got %T", v)
	}
	switch f := tag.Value.(type) {
	case cbor.Float64:
		return time.UnixMilli(int64(math.Round(float64(f) * 1e3))).UTC(), nil
	case cbor.Float32:
		return time.UnixMilli(int64(math.Round(float64(f) * 1e3))).UTC(), nil
	}
	t, err := cbor.AsTime(v)
	return t.UTC(), err
}

func timeField(m cbor.Map, field string) (time.Time, error) {
	v, ok := m[field]
	if !ok {
		return time.Time{}, missing("%s is required", field)
	}
	t, err := timestamp(v)
	if err != nil {
		return time.Time{}, invalidValue("%s: %v", field, err)
	}
	return t, nil
}

// dimensions returns the canonical form of m's Dimensions: order does not
// matter, names must be distinct, and matching is exact on the whole set.
func dimensions(m cbor.Map) (string, error) {
	l, err := list(m, "Dimensions")
	if err != nil {
		return "", err
	}
	pairs := make([]string, 0, len(l))
	seen := make(map[string]bool, len(l))
	for i, v := range l {
		d, ok := v.(cbor.Map)
		if !ok {
			return "", fmt.Errorf("Dimensions[%d] is a %T", i, v)
		}
		name, err := str(d, "Name")
		if err != nil {
			return "", err
		}
		value, err := str(d, "Value")
		if err != nil {
			return "", err
		}
		if name == "" || value == "" {
			return "", fmt.Errorf("Dimensions[%d] needs a Name and a Value", i)
		}
		if seen[name] {
			return "", fmt.Errorf("duplicate dimension %q", name)
		}
		seen[name] = true
		pairs = append(pairs, name+"="+value)
	}
	slices.Sort(pairs)
	return strings.Join(pairs, "\x00"), nil
}
