// Package metrics gathers the cache pool's statistics and serves them, as a
// Reader, to the manager's UI and auto-scaler, from one of two
// interchangeable backends.
//
// Definitions follow DESIGN §5 everywhere: pool figures are sums of the
// nodes' counts; miss rate = misses/GETs and hit rate = hits/GETs are
// computed from the summed counts, never as averages of node rates; a minute
// or window without GETs has no rate (nil, or ok == false).
//
// # Aggregation
//
// A node's statistics arrive as samples (node.Sample): counts are deltas over
// [Start, End), Items and Bytes the occupancy at End. A sample belongs to the
// minute that contains its End. History's point for a minute sums the counts
// of every sample in it; its Items and Bytes are the sum, over the nodes
// with a sample in that minute, of each node's last value in the minute (in
// the partial minute that contains now, a current member that has not
// reported yet keeps its value from the previous minute, so the newest
// point does not dip). A minute without data has zero counts, nil rates and
// carries forward Nodes, Items and Bytes. Totals sums the samples whose End
// is in (now-window, now]; its Items and Bytes are each current member's
// latest value in the window, and Nodes the number of current members with
// data in the window.
//
// # Embedded backend (default)
//
// Embedded runs in every manager replica: every Interval (5 s) it asks each
// current member for GET /stats?since=<End of the newest sample it holds
// for that node, or now-Keep>, stores the new samples per node (deduplicated
// by End), records the pool size, and forgets what is older than Keep
// (35 min). Every replica therefore holds the same samples within one
// interval, so the UI on any replica and a newly elected leader's scaler
// see the same figures. History's Nodes is the pool size at the last scrape
// in the minute (or, for minutes before this replica's first scrape, the
// number of nodes with samples in the minute).
//
// # CloudWatch backend (--metrics cloudwatch)
//
// Each node runs a Publisher that sends its new samples every Interval (5 s)
// with PutMetricData; every manager replica reads them back with
// GetMetricData through a CloudWatchReader. IAM: nodes need
// cloudwatch:PutMetricData, managers cloudwatch:GetMetricData.
//
//	Namespace: Memcache (CloudWatchConfig.Namespace)
//
//	Metric    Unit   Dimensions   One datum per sample, Timestamp = sample End
//	Hits      Count  Pool         GETs that found the key, in the sample
//	Misses    Count  Pool         GETs that did not, in the sample
//	Gets      Count  Pool         GETs (Hits + Misses), in the sample
//	Requests  Count  Pool         cache requests served (get, put, invalidate, clear)
//	Items     Count  Pool, Node   items cached at the sample's End
//	Bytes     Bytes  Pool, Node   bytes of values cached at the sample's End
//
// Pool is CloudWatchConfig.Pool ("default"); Node is the node's id. The four
// counts carry only Pool, so CloudWatch adds up all nodes' datapoints and the
// Sum over a period is the pool's total. Items and Bytes are occupancy, which
// must not be summed over time, so they carry Node as well. Data is standard
// resolution (60 s).
//
// Reading: History asks for 60-s periods starting at the first minute; the
// counts with statistic Sum, Items and Bytes with Maximum for each current
// member, summed over the members that have a datapoint in the minute. Its
// Nodes is the number of current members that published in the minute (the
// pool size from the replicated state for the minute containing now), as
// CloudWatch keeps no membership history. Totals also asks for 60-s periods
// and adds them up, rather than one period of the window's length, so that
// Items and Bytes can come from each member's newest minute (its Maximum
// there) instead of the whole window. CloudWatch aligns data on minutes, so
// a window whose start is not on a minute starts at the beginning of that
// minute. GetMetricData pages (NextToken) are followed to the end.
//
// Differences from the embedded backend, all from CloudWatch itself:
// occupancy is a per-minute Maximum rather than the last value; a member
// that has left the pool no longer contributes Items/Bytes (its counts
// remain in the Pool sums); windows start on a minute; and data appear after
// CloudWatch's ingestion delay (typically well under a minute) rather than
// within one scrape.
package metrics
