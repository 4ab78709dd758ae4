package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// deleteBatch is the most keys one DeleteObjects request may carry.
const deleteBatch = 1000

// S3API is the part of *s3.Client that S3 uses.
type S3API interface {
	PutObject(ctx context.Context, in *s3.PutObjectInput, optFns ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	GetObject(ctx context.Context, in *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
	DeleteObject(ctx context.Context, in *s3.DeleteObjectInput, optFns ...func(*s3.Options)) (*s3.DeleteObjectOutput, error)
	ListObjectsV2(ctx context.Context, in *s3.ListObjectsV2Input, optFns ...func(*s3.Options)) (*s3.ListObjectsV2Output, error)
	DeleteObjects(ctx context.Context, in *s3.DeleteObjectsInput, optFns ...func(*s3.Options)) (*s3.DeleteObjectsOutput, error)
	HeadBucket(ctx context.Context, in *s3.HeadBucketInput, optFns ...func(*s3.Options)) (*s3.HeadBucketOutput, error)
	CreateBucket(ctx context.Context, in *s3.CreateBucketInput, optFns ...func(*s3.Options)) (*s3.CreateBucketOutput, error)
}

// S3Config says where an S3 store keeps its objects. Credentials are not part
// of it: they come from the AWS SDK's default chain (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, the shared config and credentials files, or the EC2
// instance role).
type S3Config struct {
	// Bucket is the bucket name. Required.
	Bucket string
	// Prefix is prepended to every object name, e.g. "memcache/". A
	// non-empty prefix is made to end in "/". If blank, objects live at the
	// top of the bucket and DeleteAll empties the whole bucket.
	Prefix string
	// Endpoint is the base URL of an S3-compatible server (versitygw,
	// MinIO), e.g. "http://127.0.0.1:7070". Setting it implies PathStyle.
	// If blank, the SDK's AWS endpoint for the region is used.
	Endpoint string
	// Region is the bucket's region. If blank, it comes from the SDK's
	// default chain (AWS_REGION, shared config), and failing that defaults
	// to "us-east-1" when Endpoint is set.
	Region string
	// PathStyle addresses buckets as http://host/bucket/key instead of
	// http://bucket.host/key.
	PathStyle bool
}

// S3 is a Store that keeps each object as the key Prefix+name in a bucket.
type S3 struct {
	client S3API
	bucket string
	prefix string
	region string
}

// normPrefix returns p ending in "/" (or "" if p is blank).
func normPrefix(p string) string {
	if p == "" || strings.HasSuffix(p, "/") {
		return p
	}
	return p + "/"
}

// NewS3 returns an S3 store for cfg. It loads the AWS configuration with
// config.LoadDefaultConfig and checks with HeadBucket that the bucket exists;
// if it does not, the error wraps ErrNoBucket and names the bucket. It never
// creates the bucket: call CreateBucket for that.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if cfg.Bucket == "" {
		return nil, fmt.Errorf("%w: S3 bucket is required", ErrConfig)
	}
	if p := strings.TrimSuffix(cfg.Prefix, "/"); p != "" {
		if err := checkName(p); err != nil {
			return nil, fmt.Errorf("%w: S3 prefix: %w", ErrConfig, err)
		}
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("blob: loading AWS configuration: %w", err)
	}
	if awsCfg.Region == "" && cfg.Endpoint != "" {
		awsCfg.Region = "us-east-1"
	}
	if awsCfg.Region == "" {
		return nil, fmt.Errorf("%w: no AWS region: set the S3 region or AWS_REGION", ErrConfig)
	}
	cfg.Region = awsCfg.Region
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle || cfg.Endpoint != ""
	})
	s := NewS3WithClient(client, cfg)
	if err := s.checkBucket(ctx, cfg.Endpoint); err != nil {
		return nil, err
	}
	return s, nil
}

// NewS3WithClient returns an S3 store that uses client as it is; only
// cfg.Bucket, cfg.Prefix and cfg.Region (for CreateBucket) are read. It does
// not check the bucket.
func NewS3WithClient(client S3API, cfg S3Config) *S3 {
	return &S3{client: client, bucket: cfg.Bucket, prefix: normPrefix(cfg.Prefix), region: cfg.Region}
}

// Kind returns "s3".
func (s *S3) Kind() string { return "s3" }

// String returns "s3://bucket/prefix", for logs.
func (s *S3) String() string { return "s3://" + s.bucket + "/" + s.prefix }

func (s *S3) checkBucket(ctx context.Context, endpoint string) error {
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)})
	if err == nil {
		return nil
	}
	where := ""
	if endpoint != "" {
		where = " at " + endpoint
	}
	if isNoBucket(err) || httpStatus(err) == http.StatusNotFound {
		return fmt.Errorf("%w: bucket %q%s (create it first)", ErrNoBucket, s.bucket, where)
	}
	return fmt.Errorf("blob: checking S3 bucket %q%s: %w", s.bucket, where, err)
}

// CreateBucket creates the bucket, for tests and single-machine setups. A
// bucket that already exists and that we can use is not an error.
func (s *S3) CreateBucket(ctx context.Context) error {
	in := &s3.CreateBucketInput{Bucket: aws.String(s.bucket)}
	if s.region != "" && s.region != "us-east-1" {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{
			LocationConstraint: types.BucketLocationConstraint(s.region),
		}
	}
	_, err := s.client.CreateBucket(ctx, in)
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	switch {
	case err == nil, errors.As(err, &owned), apiCode(err) == "BucketAlreadyOwnedByYou":
		return nil
	case errors.As(err, &exists), apiCode(err) == "BucketAlreadyExists":
		// Some servers say this for a bucket of our own too; it is fine if
		// we can use it.
		if _, herr := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)}); herr == nil {
			return nil
		}
	}
	return fmt.Errorf("blob: creating S3 bucket %q: %w", s.bucket, err)
}

// Put stores data under name with the given Content-Type.
func (s *S3) Put(ctx context.Context, name string, data []byte, contentType string) error {
	if err := checkName(name); err != nil {
		return err
	}
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(s.prefix + name),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	}
	if contentType != "" {
		in.ContentType = aws.String(contentType)
	}
	if _, err := s.client.PutObject(ctx, in); err != nil {
		return s.translate("put", name, err)
	}
	return nil
}

// Get returns the whole object, or ErrNotFound.
func (s *S3) Get(ctx context.Context, name string) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + name),
	})
	if err != nil {
		return nil, s.translate("get", name, err)
	}
	defer out.Body.Close()
	var buf bytes.Buffer
	if out.ContentLength != nil && *out.ContentLength > 0 {
		buf.Grow(int(*out.ContentLength))
	}
	if _, err := io.Copy(&buf, out.Body); err != nil {
		return nil, fmt.Errorf("blob: get %q: reading body: %w", name, err)
	}
	return buf.Bytes(), nil
}

// Delete removes the object; an absent object is not an error.
func (s *S3) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + name),
	})
	if err != nil && !isNoKey(err) {
		return s.translate("delete", name, err)
	}
	return nil
}

// DeleteAll removes every object whose key starts with the prefix, listing
// and deleting up to 1000 keys per request, and returns how many it removed.
func (s *S3) DeleteAll(ctx context.Context) (int, error) {
	n := 0
	var after *string
	for {
		// StartAfter rather than a continuation token: the listing stays
		// correct while the keys already listed are being deleted.
		page, err := s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
			Bucket:     aws.String(s.bucket),
			Prefix:     aws.String(s.prefix),
			StartAfter: after,
			MaxKeys:    aws.Int32(deleteBatch),
		})
		if err != nil {
			return n, s.translate("delete all: list", "", err)
		}
		ids := make([]types.ObjectIdentifier, 0, len(page.Contents))
		for _, o := range page.Contents {
			if o.Key == nil || !strings.HasPrefix(*o.Key, s.prefix) {
				continue // never delete outside the prefix, whatever the server says
			}
			ids = append(ids, types.ObjectIdentifier{Key: o.Key})
		}
		if len(page.Contents) > 0 {
			after = page.Contents[len(page.Contents)-1].Key
		}
		for len(ids) > 0 {
			batch := ids[:min(len(ids), deleteBatch)]
			ids = ids[len(batch):]
			out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
				Bucket: aws.String(s.bucket),
				Delete: &types.Delete{Objects: batch, Quiet: aws.Bool(true)},
			})
			if err != nil {
				return n, s.translate("delete all", "", err)
			}
			n += len(batch) - len(out.Errors)
			if len(out.Errors) > 0 {
				e := out.Errors[0]
				return n, fmt.Errorf("blob: delete all: %d keys not deleted; first %q: %s: %s",
					len(out.Errors), aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message))
			}
		}
		if len(page.Contents) == 0 || !aws.ToBool(page.IsTruncated) {
			return n, nil
		}
	}
}

// translate maps an SDK error for object name to this package's errors.
func (s *S3) translate(op, name string, err error) error {
	switch {
	case isNoBucket(err):
		return fmt.Errorf("%w: bucket %q", ErrNoBucket, s.bucket)
	case isNoKey(err):
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	case name != "":
		return fmt.Errorf("blob: %s %q: %w", op, name, err)
	default:
		return fmt.Errorf("blob: %s: %w", op, err)
	}
}

// apiCode returns the S3 error code of err, or "".
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// httpStatus returns the HTTP status code of the response that caused err, or 0.
func httpStatus(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// isNoBucket reports whether err says the bucket does not exist.
func isNoBucket(err error) bool {
	var nb *types.NoSuchBucket
	return errors.As(err, &nb) || apiCode(err) == "NoSuchBucket"
}

// isNoKey reports whether err says the object does not exist: NoSuchKey, or
// NotFound / a bare 404 (HEAD-style responses carry no error body).
func isNoKey(err error) bool {
	var nk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nk) || errors.As(err, &nf) {
		return true
	}
	switch apiCode(err) {
	case "NoSuchKey", "NotFound":
		return true
	case "NoSuchBucket":
		return false
	}
	return httpStatus(err) == http.StatusNotFound
}
