package systemtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pgtest"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/internal/s3test"
	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/region"
)

// pngImage returns a distinct PNG of about n KB.
func pngImage(seed uint64, kb int) []byte {
	side := 8
	for side*side*3 < kb<<10 {
		side += 4
	}
	r := rand.New(rand.NewPCG(seed, 7))
	img := image.NewRGBA(image.Rect(0, 0, side, side))
	for i := range img.Pix {
		img.Pix[i] = byte(r.Uint32())
	}
	img.Set(0, 0, color.RGBA{byte(seed), byte(seed >> 8), 1, 255})
	var b bytes.Buffer
	png.Encode(&b, img)
	return b.Bytes()
}

// admin posts to a tester admin endpoint with the admin token (unless
// token is ""), retrying across an election; it returns the status and the
// decoded body.
func admin(t testing.TB, base, path, token string) (int, map[string]any) {
	t.Helper()
	return testcluster.Admin(t, base, path, token)
}

func listKeys(t testing.TB, base string) []string {
	t.Helper()
	resp, err := http.Post(base+"/api/list_keys", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Success string   `json:"success"`
		Keys    []string `json:"keys"`
	}
	json.NewDecoder(resp.Body).Decode(&out)
	if out.Success != "true" {
		t.Fatalf("list_keys: %d %+v", resp.StatusCode, out)
	}
	return out.Keys
}

// imageSource reads GET /images/{key} and says where it came from.
func imageSource(t testing.TB, base, key string) ([]byte, string) {
	t.Helper()
	resp, err := http.Get(base + "/images/" + url.PathEscape(key))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Sprint(resp.StatusCode)
	}
	return b, resp.Header.Get("X-Memcache-Source")
}

// runEndToEnd drives the whole tester API against 3 managers, real node
// processes and a frontend on the given stores.
func runEndToEnd(t *testing.T, db string, s3 *blob.S3Config) {
	tc := startSystem(t, 3, 2*time.Second)
	ms := tc.Managers
	o := role.FrontendConfig{DB: db, BlobDir: filepath.Join(t.TempDir(), "blobs"), NearCacheMB: 64}
	if s3 != nil {
		o.S3 = *s3
	}
	started := tc.StartFrontend(o)
	fe := started.Frontend()
	base := started.URL()
	waitfor.True(t, testcluster.Wait, "the frontend to receive the pool", func() bool { return len(fe.Pool().Members) == 1 })

	// Upload one image per region and a few awkward keys; read them back byte-exact.
	latest := map[string][]byte{}
	keys := keysByRegion()
	all := append(keys[:], "dir/sub/x.png", "../escape", "space and ünïcode 猫")
	for i, k := range all {
		latest[k] = pngImage(uint64(i), 4+i%8)
		if code := uploadImage(t, base, k, latest[k]); code != 200 {
			t.Fatalf("upload %q: %d", k, code)
		}
	}
	check := func(when string) {
		t.Helper()
		for _, k := range all {
			if got := getImage(t, base, k); !bytes.Equal(got, latest[k]) {
				t.Fatalf("%s: %q returned %d bytes that are not the latest upload (%d bytes)", when, k, len(got), len(latest[k]))
			}
		}
	}
	check("after upload")
	if got := listKeys(t, base); len(got) != len(all) {
		t.Fatalf("list_keys: %d keys, want %d", len(got), len(all))
	}
	// An upload fills the cache: the next read is a hit.
	if _, src := imageSource(t, base, keys[3]); src != "cache" {
		t.Errorf("read after upload came from %q, want cache", src)
	}

	// Admin API through the frontend needs the token.
	if code, _ := admin(t, base, "/api/getNumNodes", ""); code != http.StatusUnauthorized {
		t.Errorf("getNumNodes without the token: %d, want 401", code)
	}
	if code, out := admin(t, base, "/api/getNumNodes", testcluster.Token); code != 200 || out["numNodes"] != 1.0 {
		t.Errorf("getNumNodes: %d %v, want 1", code, out)
	}
	for _, bad := range []struct{ q, msg string }{
		{"cacheSize=0", "capacity_mb 0"},
		{"cacheSize=2000", "capacity_mb 2000"},
		{"policy=FIFO", "FIFO"},
		{"numNodes=9", "numNodes 9 is outside 1..8"},
		{"numNodes=two", "not a whole number"},
		{"mode=auto&numNodes=3", "only be set in manual mode"},
		{"expRatio=1", "expand_ratio"},
		{"shrinkRatio=1.5", "shrink_ratio"},
		{"maxMiss=0.2&minMiss=0.5", "min_miss_rate"},
		{"colour=blue", "unknown parameter"},
	} {
		code, out := admin(t, base, "/api/configure_cache?"+bad.q, testcluster.Token)
		e, _ := out["error"].(map[string]any)
		if code != 400 || out["success"] != "false" || !strings.Contains(fmt.Sprint(e["message"]), bad.msg) {
			t.Errorf("configure_cache?%s: %d %v, want 400 mentioning %q", bad.q, code, out, bad.msg)
		}
	}
	if st := ms[0].Cluster().State(); st.Cache != fsm.DefaultState().Cache || len(st.Members) != 1 || st.Scaling != fsm.DefaultState().Scaling {
		t.Fatalf("refused configure_cache calls changed the state: %+v", st)
	}
	resize := func(n int) {
		t.Helper()
		code, out := admin(t, base, fmt.Sprintf("/api/configure_cache?mode=manual&numNodes=%d&cacheSize=16&policy=LRU", n), testcluster.Token)
		if code != 200 || out["numNodes"] != float64(n) || out["cacheSize"] != 16.0 || out["policy"] != "LRU" || out["mode"] != "manual" {
			t.Fatalf("configure_cache numNodes=%d: %d %v", n, code, out)
		}
		waitfor.True(t, testcluster.Wait, fmt.Sprintf("the frontend to route by %d nodes", n), func() bool { return len(fe.Pool().Members) == n })
	}
	replaceAll := func(round uint64) {
		t.Helper()
		for i, k := range all {
			latest[k] = pngImage(round*1000+uint64(i), 3)
			if code := uploadImage(t, base, k, latest[k]); code != 200 {
				t.Fatalf("replace %q: %d", k, code)
			}
		}
	}
	// No stale image after grow -> replace -> shrink -> grow (the seed's bug).
	resize(3)
	check("after growing to 3")
	replaceAll(1)
	check("after replacing")
	resize(2)
	check("after shrinking to 2")
	replaceAll(2)
	resize(3)
	check("after growing back to 3")
	resize(2)
	resize(4)
	check("after 2 -> 4")

	// Rates: reads were made, so the pool saw GETs in the last minute.
	code, out := admin(t, base, "/api/getRate?rate=miss", testcluster.Token)
	if v, ok := out["value"].(float64); code != 200 || out["success"] != "true" || out["rate"] != "miss" || !ok || v < 0 || v > 1 {
		t.Errorf("getRate miss: %d %v", code, out)
	}
	if code, _ := admin(t, base, "/api/getRate?rate=sideways", testcluster.Token); code != 400 {
		t.Errorf("getRate with a bad rate: %d, want 400", code)
	}

	// Reads keep working while a node is killed: misses fall back to the stores.
	st := fe.Pool()
	victim := st.Members[1].ID
	var stop atomic.Bool
	var failures atomic.Int64
	var reads atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; !stop.Load(); i++ {
				k := all[i%len(all)]
				got, _ := imageSource(t, base, k)
				reads.Add(1)
				if !bytes.Equal(got, latest[k]) {
					failures.Add(1)
				}
			}
		}()
	}
	waitfor.True(t, testcluster.Wait, "reads to start", func() bool { return reads.Load() > 20 })
	if err := syscall.Kill(pidOf(t, victim), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, testcluster.Wait, "the killed node to be replaced", func() bool {
		_, still := fe.Pool().Member(victim)
		return !still && len(fe.Pool().Members) == 4
	})
	before := reads.Load()
	waitfor.True(t, testcluster.Wait, "more reads after the replacement", func() bool { return reads.Load() > before+20 })
	stop.Store(true)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d reads failed or were wrong while a node was killed", n, reads.Load())
	}
	check("after the node kill")

	// Delete all: rows, objects and every node's cache.
	if code, out := admin(t, base, "/api/delete_all", ""); code != 401 || out["success"] != "false" {
		t.Errorf("delete_all without the token: %d %v, want 401", code, out)
	}
	if code, out := admin(t, base, "/api/delete_all", testcluster.Token); code != 200 || out["success"] != "true" {
		t.Fatalf("delete_all: %d %v", code, out)
	}
	if got := listKeys(t, base); len(got) != 0 {
		t.Errorf("list_keys after delete_all: %v", got)
	}
	for _, k := range all {
		if got, src := imageSource(t, base, k); got != nil || src != "404" {
			t.Fatalf("%q after delete_all: %q, want 404", k, src)
		}
	}
	nodes := nodeClient(tc)
	for _, m := range fe.Pool().Members {
		waitfor.True(t, testcluster.Wait, m.ID+" to clear its cache", func() bool {
			stats, err := nodes.Stats(context.Background(), m.HTTP, time.Time{})
			return err == nil && stats.Counters.Items == 0
		})
	}
	if s3 == nil {
		if n := countObjects(t, o.BlobDir); n != 0 {
			t.Errorf("%d objects left in the blob dir after delete_all", n)
		}
	}
	_ = region.Count
}

func countObjects(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

func TestEndToEndOnEmbeddedStores(t *testing.T) {
	runEndToEnd(t, filepath.Join(t.TempDir(), "keys.db"), nil)
}

// TestEndToEndOnPostgresAndS3 runs the same scenario with the key index in
// a real PostgreSQL and the images in a real S3 server (versitygw).
func TestEndToEndOnPostgresAndS3(t *testing.T) {
	dsn := pgtest.DSN(t)
	srv := s3test.Start(t)
	srv.Env(t)
	ctx := context.Background()
	cfg := blob.S3Config{Bucket: "memcache-e2e", Prefix: "images/", Endpoint: srv.Endpoint, Region: srv.Region, PathStyle: true}
	awsCfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(srv.Region))
	if err != nil {
		t.Fatal(err)
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(srv.Endpoint)
		o.UsePathStyle = true
	})
	if err := blob.NewS3WithClient(client, cfg).CreateBucket(ctx); err != nil {
		t.Fatal(err)
	}
	runEndToEnd(t, dsn, &cfg)
	// Nothing is left under the prefix after delete_all.
	out, err := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(cfg.Bucket), Prefix: aws.String(cfg.Prefix)})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(out.Contents); n != 0 {
		t.Errorf("%d objects left in S3 after delete_all", n)
	}
}

// TestAdminReadsSeeAcknowledgedWrites asks every replica right after a
// resize acknowledged by another: none may answer the old pool size.
func TestAdminReadsSeeAcknowledgedWrites(t *testing.T) {
	ms := startSystem(t, 3, time.Hour).Managers
	for n := 2; n <= 4; n++ {
		if code, _ := admin(t, ms[(n+1)%3].URL(), fmt.Sprintf("/api/configure_cache?mode=manual&numNodes=%d", n), testcluster.Token); code != 200 {
			t.Fatalf("resize to %d: %d", n, code)
		}
		for _, m := range ms {
			if code, out := admin(t, m.URL(), "/api/getNumNodes", testcluster.Token); code != 200 || out["numNodes"] != float64(n) {
				t.Fatalf("getNumNodes on %s right after resizing to %d: %d %v", m.Name(), n, code, out)
			}
		}
	}
}

// TestPartialConfigUpdatesAreNotLost sends a capacity change to one replica
// and, right after, a policy change to another: the second must not write
// back a stale capacity.
func TestPartialConfigUpdatesAreNotLost(t *testing.T) {
	ms := startSystem(t, 3, time.Hour).Managers
	for i := range 6 {
		capacity := 10 + i
		policy := []string{"RR", "LRU"}[i%2]
		if code := testcluster.Write(t, "PUT", ms[i%3].URL()+"/v1/config/cache", fmt.Appendf(nil, `{"capacity_mb":%d}`, capacity), nil); code != 200 {
			t.Fatalf("set capacity: %d", code)
		}
		if code := testcluster.Write(t, "PUT", ms[(i+1)%3].URL()+"/v1/config/cache", fmt.Appendf(nil, `{"policy":%q}`, policy), nil); code != 200 {
			t.Fatalf("set policy: %d", code)
		}
		want := fsm.CacheConfig{CapacityMB: capacity, Policy: fsm.Policy(policy)}
		waitfor.True(t, testcluster.Wait, "every replica to hold both changes", func() bool {
			for _, m := range ms {
				if m.Cluster().State().Cache != want {
					return false
				}
			}
			return true
		})
	}
}
