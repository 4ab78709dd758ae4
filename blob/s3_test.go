package blob

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// setAWSEnv points the SDK's default chain at static test credentials and
// nothing else (no shared config files, no IMDS, no region).
func setAWSEnv(t *testing.T, access, secret string) {
	t.Helper()
	none := filepath.Join(t.TempDir(), "none")
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":           access,
		"AWS_SECRET_ACCESS_KEY":       secret,
		"AWS_SESSION_TOKEN":           "",
		"AWS_PROFILE":                 "",
		"AWS_DEFAULT_PROFILE":         "",
		"AWS_REGION":                  "",
		"AWS_DEFAULT_REGION":          "",
		"AWS_CONFIG_FILE":             none,
		"AWS_SHARED_CREDENTIALS_FILE": none,
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_ENDPOINT_URL":            "",
		"AWS_ENDPOINT_URL_S3":         "",
	} {
		t.Setenv(k, v)
	}
}

// rawClient is a plain SDK client for checks the Store API cannot make.
func rawClient(endpoint, access, secret string) *s3.Client {
	return s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(access, secret, ""),
	})
}

// startGofakes3 serves an in-memory S3 on a loopback port and returns its URL.
func startGofakes3(t *testing.T) string {
	t.Helper()
	ts := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	t.Cleanup(ts.Close)
	return ts.URL
}

// testS3Backend runs the contract and the S3-specific tests against the
// S3-compatible server at endpoint.
func testS3Backend(t *testing.T, endpoint, access, secret string) {
	ctx := context.Background()
	setAWSEnv(t, access, secret)
	const bucket = "memcache-test"
	cfg := S3Config{Bucket: bucket, Prefix: "memcache", Endpoint: endpoint}

	// The bucket does not exist yet: NewS3 says so and does not create it.
	_, err := NewS3(ctx, cfg)
	if !errors.Is(err, ErrNoBucket) || !strings.Contains(err.Error(), bucket) {
		t.Fatalf("NewS3 before the bucket exists: got %v, want ErrNoBucket naming %q", err, bucket)
	}
	raw := rawClient(endpoint, access, secret)
	admin := NewS3WithClient(raw, S3Config{Bucket: bucket})
	if err := admin.CreateBucket(ctx); err != nil {
		t.Fatalf("CreateBucket: %v", err)
	}
	if err := admin.CreateBucket(ctx); err != nil {
		t.Fatalf("CreateBucket again: got %v, want nil", err)
	}

	s, err := NewS3(ctx, cfg)
	if err != nil {
		t.Fatalf("NewS3: %v", err)
	}
	if s.prefix != "memcache/" || s.region != "us-east-1" || s.Kind() != "s3" {
		t.Fatalf("NewS3: got prefix %q region %q kind %q, want %q %q %q",
			s.prefix, s.region, s.Kind(), "memcache/", "us-east-1", "s3")
	}

	testStore(t, s)

	t.Run("DeleteAllScope", func(t *testing.T) {
		// "memcache-other/" starts with "memcache": only the "/" keeps it apart.
		other, err := NewS3(ctx, S3Config{Bucket: bucket, Prefix: "memcache-other/", Endpoint: endpoint})
		if err != nil {
			t.Fatal(err)
		}
		testDeleteAllScope(t, s, other)
	})

	t.Run("KeysUnderPrefix", func(t *testing.T) {
		mustPut(t, s, "img/k", []byte("k"))
		defer mustDelete(t, s, "img/k")
		out, err := raw.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, o := range out.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
		if want := []string{"memcache/img/k"}; !slices.Equal(keys, want) {
			t.Fatalf("keys in bucket: got %q, want %q", keys, want)
		}
	})

	t.Run("ContentType", func(t *testing.T) {
		if err := s.Put(ctx, "img/ct", []byte("\x89PNG\r\n\x1a\n"), "image/png"); err != nil {
			t.Fatal(err)
		}
		defer mustDelete(t, s, "img/ct")
		head, err := raw.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("memcache/img/ct")})
		if err != nil {
			t.Fatalf("HeadObject: %v", err)
		}
		if got := aws.ToString(head.ContentType); got != "image/png" {
			t.Fatalf("ContentType: got %q, want %q", got, "image/png")
		}
		if err := s.Put(ctx, "img/ct", []byte("GIF89a"), "image/gif"); err != nil {
			t.Fatal(err)
		}
		get, err := raw.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("memcache/img/ct")})
		if err != nil {
			t.Fatalf("GetObject: %v", err)
		}
		get.Body.Close()
		if got := aws.ToString(get.ContentType); got != "image/gif" {
			t.Fatalf("ContentType after overwrite: got %q, want %q", got, "image/gif")
		}
	})

	t.Run("MissingBucket", func(t *testing.T) {
		_, err := NewS3(ctx, S3Config{Bucket: "no-such-bucket-here", Endpoint: endpoint})
		if !errors.Is(err, ErrNoBucket) || !strings.Contains(err.Error(), "no-such-bucket-here") {
			t.Fatalf("NewS3: got %v, want ErrNoBucket naming the bucket", err)
		}
		gone := NewS3WithClient(raw, S3Config{Bucket: "no-such-bucket-here"})
		if _, err := gone.Get(ctx, "x"); !errors.Is(err, ErrNoBucket) {
			t.Fatalf("Get in a missing bucket: got %v, want ErrNoBucket", err)
		}
	})
}

func TestS3Gofakes3(t *testing.T) {
	testS3Backend(t, startGofakes3(t), "AKIAFAKE", "fakesecret")
}

func TestNewS3Config(t *testing.T) {
	ctx := context.Background()
	setAWSEnv(t, "AKIAFAKE", "fakesecret")
	for _, tc := range []struct {
		name string
		cfg  S3Config
	}{
		{"no bucket", S3Config{Endpoint: "http://127.0.0.1:1"}},
		{"bad prefix", S3Config{Bucket: "b", Prefix: "../x", Endpoint: "http://127.0.0.1:1"}},
		{"no region", S3Config{Bucket: "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewS3(ctx, tc.cfg); !errors.Is(err, ErrConfig) {
				t.Fatalf("NewS3(%+v): got %v, want ErrConfig", tc.cfg, err)
			}
		})
	}
}

func TestNormPrefix(t *testing.T) {
	for in, want := range map[string]string{"": "", "memcache": "memcache/", "memcache/": "memcache/", "a/b": "a/b/"} {
		if got := normPrefix(in); got != want {
			t.Errorf("normPrefix(%q): got %q, want %q", in, got, want)
		}
	}
}

// stubS3 is an S3API whose calls fail with err; DeleteAll's calls are served
// from keys.
type stubS3 struct {
	S3API
	err       error
	keys      []string // sorted
	batches   []int
	failFirst bool // DeleteObjects reports the first key of each batch as failed
}

func (c *stubS3) GetObject(context.Context, *s3.GetObjectInput, ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	return nil, c.err
}

func (c *stubS3) DeleteObject(context.Context, *s3.DeleteObjectInput, ...func(*s3.Options)) (*s3.DeleteObjectOutput, error) {
	return nil, c.err
}

func (c *stubS3) HeadBucket(context.Context, *s3.HeadBucketInput, ...func(*s3.Options)) (*s3.HeadBucketOutput, error) {
	return nil, c.err
}

func (c *stubS3) ListObjectsV2(_ context.Context, in *s3.ListObjectsV2Input, _ ...func(*s3.Options)) (*s3.ListObjectsV2Output, error) {
	out := &s3.ListObjectsV2Output{IsTruncated: aws.Bool(false)}
	for _, k := range c.keys {
		if !strings.HasPrefix(k, aws.ToString(in.Prefix)) || k <= aws.ToString(in.StartAfter) {
			continue
		}
		if len(out.Contents) == int(aws.ToInt32(in.MaxKeys)) {
			out.IsTruncated = aws.Bool(true)
			break
		}
		out.Contents = append(out.Contents, types.Object{Key: aws.String(k)})
	}
	return out, nil
}

func (c *stubS3) DeleteObjects(_ context.Context, in *s3.DeleteObjectsInput, _ ...func(*s3.Options)) (*s3.DeleteObjectsOutput, error) {
	c.batches = append(c.batches, len(in.Delete.Objects))
	out := &s3.DeleteObjectsOutput{}
	for i, o := range in.Delete.Objects {
		if c.failFirst && i == 0 {
			out.Errors = append(out.Errors, types.Error{Key: o.Key, Code: aws.String("AccessDenied")})
			continue
		}
		c.keys = slices.DeleteFunc(c.keys, func(k string) bool { return k == *o.Key })
	}
	return out, nil
}

func httpErr(status int, err error) error {
	return &smithyhttp.ResponseError{
		Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
		Err:      err,
	}
}

func TestS3ErrorTranslation(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		err       error
		get, head error // want, by errors.Is; nil means "neither sentinel"
		deleteNil bool
	}{
		{"NoSuchKey type", &types.NoSuchKey{}, ErrNotFound, nil, true},
		{"NoSuchKey code", &smithy.GenericAPIError{Code: "NoSuchKey"}, ErrNotFound, nil, true},
		{"NotFound code", httpErr(404, &smithy.GenericAPIError{Code: "NotFound"}), ErrNotFound, ErrNoBucket, true},
		{"bare 404", httpErr(404, errors.New("not found")), ErrNotFound, ErrNoBucket, true},
		{"NoSuchBucket", httpErr(404, &types.NoSuchBucket{}), ErrNoBucket, ErrNoBucket, false},
		{"AccessDenied", httpErr(403, &smithy.GenericAPIError{Code: "AccessDenied"}), nil, nil, false},
		{"500", httpErr(500, errors.New("boom")), nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewS3WithClient(&stubS3{err: tc.err}, S3Config{Bucket: "bkt", Prefix: "p"})
			check := func(op string, got, want error) {
				t.Helper()
				if want == nil {
					if got == nil || errors.Is(got, ErrNotFound) || errors.Is(got, ErrNoBucket) {
						t.Errorf("%s: got %v, want a plain error", op, got)
					} else if !errors.Is(got, tc.err) {
						t.Errorf("%s: got %v, want it to wrap %v", op, got, tc.err)
					}
				} else if !errors.Is(got, want) {
					t.Errorf("%s: got %v, want %v", op, got, want)
				}
			}
			_, err := s.Get(ctx, "x")
			check("Get", err, tc.get)
			err = s.checkBucket(ctx, "")
			check("checkBucket", err, tc.head)
			if err != nil && !strings.Contains(err.Error(), `"bkt"`) {
				t.Errorf("checkBucket: error %q does not name the bucket", err)
			}
			if err := s.Delete(ctx, "x"); (err == nil) != tc.deleteNil {
				t.Errorf("Delete: got %v, want nil: %v", err, tc.deleteNil)
			}
		})
	}
}

func TestS3DeleteAllBatches(t *testing.T) {
	stub := &stubS3{}
	for i := range 2500 {
		stub.keys = append(stub.keys, fmt.Sprintf("p/%05d", i))
	}
	stub.keys = append(stub.keys, "other/1", "p-x/1", "q/1")
	slices.Sort(stub.keys)
	s := NewS3WithClient(stub, S3Config{Bucket: "b", Prefix: "p"})
	n, err := s.DeleteAll(context.Background())
	if err != nil || n != 2500 {
		t.Fatalf("DeleteAll: got %d, %v; want 2500, nil", n, err)
	}
	if want := []int{1000, 1000, 500}; !slices.Equal(stub.batches, want) {
		t.Fatalf("DeleteObjects batch sizes: got %v, want %v", stub.batches, want)
	}
	if want := []string{"other/1", "p-x/1", "q/1"}; !slices.Equal(stub.keys, want) {
		t.Fatalf("keys left: got %q, want %q", stub.keys, want)
	}

	stub = &stubS3{keys: []string{"p/a", "p/b", "p/c"}, failFirst: true}
	s = NewS3WithClient(stub, S3Config{Bucket: "b", Prefix: "p/"})
	n, err = s.DeleteAll(context.Background())
	if err == nil || n != 2 || !strings.Contains(err.Error(), "p/a") {
		t.Fatalf("DeleteAll with a failed key: got %d, %v; want 2 and an error naming p/a", n, err)
	}
}
