package imdsfake

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

var testIdentity = Identity{
	InstanceID:       "i-0123456789abcdef0",
	LocalIPv4:        "10.0.1.23",
	LocalHostname:    "ip-10-0-1-23.ec2.internal",
	Region:           "eu-west-1",
	AvailabilityZone: "eu-west-1b",
	InstanceType:     "t3.small",
	ImageID:          "ami-0abcdef1234567890",
	AccountID:        "123456789012",
}

func newServer(t *testing.T, id Identity) *Server {
	t.Helper()
	s := New(id)
	t.Cleanup(s.Close)
	return s
}

// client is the SDK's IMDS client for endpoint, failing fast.
func client(endpoint string, opts ...func(*imds.Options)) *imds.Client {
	return imds.New(imds.Options{Endpoint: endpoint}, opts...)
}

func metadata(ctx context.Context, c *imds.Client, path string) (string, error) {
	out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", err
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	return string(b), err
}

// statusOf returns the HTTP status of the response an SDK error carries,
// or 0.
func statusOf(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func TestSDKReadsIdentity(t *testing.T) {
	s := newServer(t, testIdentity)
	c := client(s.URL())
	ctx := t.Context()
	for path, want := range map[string]string{
		"instance-id":                 testIdentity.InstanceID,
		"local-ipv4":                  testIdentity.LocalIPv4,
		"local-hostname":              testIdentity.LocalHostname,
		"placement/region":            testIdentity.Region,
		"placement/availability-zone": testIdentity.AvailabilityZone,
		"placement/":                  "availability-zone\nregion",
	} {
		got, err := metadata(ctx, c, path)
		if err != nil || got != want {
			t.Errorf("GetMetadata %s: got %q, %v; want %q", path, got, err, want)
		}
	}
	// Six reads on one token: the SDK fetched it once and reused it.
	if got := s.Requests(); got != 7 {
		t.Errorf("%d requests for 6 reads, want 7 (one token, then the reads)", got)
	}

	// What the instance lacks is a 404 the caller can tell apart.
	if _, err := metadata(ctx, c, "ipv6"); statusOf(err) != http.StatusNotFound {
		t.Errorf("GetMetadata ipv6: got %v (status %d), want a 404", err, statusOf(err))
	}

	region, err := c.GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil || region.Region != testIdentity.Region {
		t.Errorf("GetRegion: got %+v, %v; want %s", region, err, testIdentity.Region)
	}
	doc, err := c.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		t.Fatal(err)
	}
	d := doc.InstanceIdentityDocument
	if d.InstanceID != testIdentity.InstanceID || d.PrivateIP != testIdentity.LocalIPv4 || d.AvailabilityZone != testIdentity.AvailabilityZone ||
		d.InstanceType != testIdentity.InstanceType || d.AccountID != testIdentity.AccountID || d.ImageID != testIdentity.ImageID {
		t.Errorf("identity document: got %+v, want the fields of %+v", d, testIdentity)
	}
}

// TestEndpointFromEnvironment: the endpoint reaches the client through
// AWS_EC2_METADATA_SERVICE_ENDPOINT and config.LoadDefaultConfig, as on a
// host whose environment file sets it.
func TestEndpointFromEnvironment(t *testing.T) {
	s := newServer(t, testIdentity)
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", s.URL())
	cfg, err := config.LoadDefaultConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got, err := metadata(t.Context(), imds.NewFromConfig(cfg), "instance-id")
	if err != nil || got != testIdentity.InstanceID {
		t.Fatalf("GetMetadata instance-id: got %q, %v; want %s", got, err, testIdentity.InstanceID)
	}
}

// TestProtocol checks the answers a client other than the SDK gets.
func TestProtocol(t *testing.T) {
	s := newServer(t, Identity{InstanceID: "i-1", LocalIPv4: "10.0.0.1"})
	do := func(method, path string, hdr map[string]string) (int, string, http.Header) {
		t.Helper()
		req, err := http.NewRequest(method, s.URL()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, tc := range []struct {
		name   string
		method string
		path   string
		hdr    map[string]string
		want   int
	}{
		{"no token", "GET", MetadataPrefix + "instance-id", nil, 401},
		{"unknown token", "GET", MetadataPrefix + "instance-id", map[string]string{TokenHeader: "forged"}, 401},
		{"dynamic without token", "GET", DynamicPrefix + "instance-identity/document", nil, 401},
		{"token without TTL", "PUT", TokenPath, nil, 400},
		{"TTL 0", "PUT", TokenPath, map[string]string{TTLHeader: "0"}, 400},
		{"TTL over 6 h", "PUT", TokenPath, map[string]string{TTLHeader: "21601"}, 400},
		{"TTL not a number", "PUT", TokenPath, map[string]string{TTLHeader: "ten"}, 400},
		{"token through a proxy", "PUT", TokenPath, map[string]string{TTLHeader: "60", "X-Forwarded-For": "10.0.0.9"}, 403},
		{"GET of the token path", "GET", TokenPath, map[string]string{TTLHeader: "60"}, 405},
		{"PUT of metadata", "PUT", MetadataPrefix + "instance-id", nil, 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, body, _ := do(tc.method, tc.path, tc.hdr); got != tc.want {
				t.Errorf("%s %s: got %d %q, want %d", tc.method, tc.path, got, body, tc.want)
			}
		})
	}

	code, tok, hdr := do("PUT", TokenPath, map[string]string{TTLHeader: "21600"})
	if code != 200 || tok == "" || hdr.Get(TTLHeader) != "21600" {
		t.Fatalf("PUT token: %d %q, TTL header %q; want 200, a token, 21600", code, tok, hdr.Get(TTLHeader))
	}
	with := map[string]string{TokenHeader: tok}
	for path, want := range map[string]int{
		MetadataPrefix + "instance-id":                 200,
		MetadataPrefix + "local-hostname":              404, // blank in the Identity
		MetadataPrefix + "placement/region":            404,
		MetadataPrefix + "no-such-thing":               404,
		DynamicPrefix + "instance-identity/document":   200,
		"/latest/user-data":                            404,
		"/2009-04-04/meta-data/instance-id":            404,
		MetadataPrefix + "placement/availability-zone": 404,
	} {
		if got, body, _ := do("GET", path, with); got != want {
			t.Errorf("GET %s with a token: got %d %q, want %d", path, got, body, want)
		}
	}
	if _, body, _ := do("GET", MetadataPrefix, with); body != "instance-id\nlocal-ipv4" {
		t.Errorf("GET %s: got %q, want the two entries served", MetadataPrefix, body)
	}
	_, body, _ := do("GET", DynamicPrefix+"instance-identity/document", with)
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil || doc["instanceId"] != "i-1" || doc["privateIp"] != "10.0.0.1" {
		t.Errorf("identity document %s: %v", body, err)
	}

	s.ExpireTokens()
	if got, _, _ := do("GET", MetadataPrefix+"instance-id", with); got != 401 {
		t.Errorf("GET with an expired token: got %d, want 401", got)
	}
}

// TestSDKRenewsAnExpiredToken: the SDK caches its token; when IMDS answers
// 401 to it, the SDK fetches a new one and retries.
func TestSDKRenewsAnExpiredToken(t *testing.T) {
	s := newServer(t, testIdentity)
	c := client(s.URL())
	if _, err := metadata(t.Context(), c, "instance-id"); err != nil {
		t.Fatal(err)
	}
	s.ExpireTokens()
	before := s.Requests()
	got, err := metadata(t.Context(), c, "local-ipv4")
	if err != nil || got != testIdentity.LocalIPv4 {
		t.Fatalf("after the token expired: got %q, %v; want %s", got, err, testIdentity.LocalIPv4)
	}
	if n := s.Requests() - before; n != 3 {
		t.Errorf("%d requests after the token expired, want 3 (the 401, a new token, the retry)", n)
	}
}

// TestSDKWithoutTokens: an IMDS whose token endpoint refuses (403) while
// metadata needs a token (401) is one the SDK cannot read. By default the
// SDK falls back to IMDSv1, gets 401 and gives up after its retries; with
// the fallback off it fails at once on the token. (The SDK wraps these
// errors in a type without Unwrap, so only the message tells the status.)
func TestSDKWithoutTokens(t *testing.T) {
	s := newServer(t, testIdentity)
	var puts, tokenless atomic.Int32
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			puts.Add(1)
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if r.Header.Get(TokenHeader) == "" {
			tokenless.Add(1)
		}
		s.srv.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(refusing.Close)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := metadata(ctx, client(refusing.URL), "instance-id")
	if err == nil || !strings.Contains(err.Error(), "StatusCode: 401") {
		t.Errorf("with the IMDSv1 fallback: got %v, want a 401 error", err)
	}
	if puts.Load() == 0 || tokenless.Load() == 0 {
		t.Errorf("with the IMDSv1 fallback: %d token requests, %d reads without a token; want both", puts.Load(), tokenless.Load())
	}

	puts.Store(0)
	tokenless.Store(0)
	_, err = metadata(ctx, client(refusing.URL, func(o *imds.Options) { o.EnableFallback = aws.FalseTernary }), "instance-id")
	if err == nil || !strings.Contains(err.Error(), "failed to get API token") || !strings.Contains(err.Error(), "StatusCode: 403") {
		t.Errorf("without the fallback: got %v, want a 403 error getting the API token", err)
	}
	if puts.Load() != 1 || tokenless.Load() != 0 {
		t.Errorf("without the fallback: %d token requests, %d reads without a token; want 1 and 0", puts.Load(), tokenless.Load())
	}
}

func TestNewOn(t *testing.T) {
	s, err := NewOn("127.0.0.1:0", testIdentity)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") {
		t.Errorf("URL %q, want http://127.0.0.1:<port>", s.URL())
	}
	if _, err := NewOn("256.0.0.1:0", testIdentity); err == nil {
		t.Error("NewOn with an invalid address: no error")
	}
}
