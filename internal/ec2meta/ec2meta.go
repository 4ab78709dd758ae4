// Package ec2meta reads the identity of the EC2 instance a process runs on
// from the instance metadata service, IMDSv2 only (session tokens; no
// fallback to IMDSv1).
//
// A cache node started with --ec2-identity reads it once at start to name
// itself and to advertise the instance's private addresses; internal/imdsfake
// serves the same protocol in tests.
package ec2meta

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// DefaultTimeout bounds Read when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Config says where and how long to read.
type Config struct {
	// Endpoint is the base URL of the metadata service. If blank, the AWS
	// SDK's: AWS_EC2_METADATA_SERVICE_ENDPOINT, else the shared config
	// file's ec2_metadata_service_endpoint, else http://169.254.169.254.
	Endpoint string
	// Timeout bounds the whole read, retries included. If zero,
	// DefaultTimeout.
	Timeout time.Duration
}

// Identity is what the instance metadata says about this instance.
type Identity struct {
	InstanceID string     // e.g. i-0123456789abcdef0
	LocalIPv4  netip.Addr // the primary private IPv4 address
	// LocalHostname is the private DNS name (ip-10-0-1-23.ec2.internal);
	// blank if the instance has none.
	LocalHostname string
}

// Host is the name peers reach the instance by: LocalHostname, else
// LocalIPv4.
func (id Identity) Host() string {
	if id.LocalHostname != "" {
		return id.LocalHostname
	}
	return id.LocalIPv4.String()
}

// URL returns scheme://<Host()>:port.
func (id Identity) URL(scheme string, port int) string {
	return scheme + "://" + net.JoinHostPort(id.Host(), strconv.Itoa(port))
}

// Client is the metadata call Read makes; *imds.Client has it.
type Client interface {
	GetMetadata(ctx context.Context, in *imds.GetMetadataInput, optFns ...func(*imds.Options)) (*imds.GetMetadataOutput, error)
}

// Read reads the instance's identity with a client configured by the AWS
// SDK's default chain (see Config.Endpoint), within cfg.Timeout. Every
// error names the metadata service and the endpoint, if one was given.
func Read(ctx context.Context, cfg Config) (Identity, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	awsCfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return Identity{}, fmt.Errorf("ec2meta: AWS config for the EC2 instance metadata service: %w", err)
	}
	c := imds.NewFromConfig(awsCfg, func(o *imds.Options) {
		if cfg.Endpoint != "" {
			o.Endpoint = cfg.Endpoint
		}
		o.EnableFallback = aws.FalseTernary // IMDSv2 only
	})
	id, err := ReadFrom(ctx, c)
	if err != nil && cfg.Endpoint != "" {
		err = fmt.Errorf("%w (endpoint %s)", err, cfg.Endpoint)
	}
	return id, err
}

// ReadFrom reads the instance's identity through c: instance-id and
// local-ipv4 (both required), local-hostname (optional: a 404 leaves it
// blank).
func ReadFrom(ctx context.Context, c Client) (Identity, error) {
	var id Identity
	var err error
	if id.InstanceID, err = get(ctx, c, "instance-id"); err != nil {
		return Identity{}, err
	}
	if id.InstanceID == "" {
		return Identity{}, errors.New("ec2meta: the EC2 instance metadata service gave an empty instance-id")
	}
	ip, err := get(ctx, c, "local-ipv4")
	if err != nil {
		return Identity{}, err
	}
	if id.LocalIPv4, err = netip.ParseAddr(ip); err != nil || !id.LocalIPv4.Is4() {
		return Identity{}, fmt.Errorf("ec2meta: the EC2 instance metadata service gave local-ipv4 %q, not an IPv4 address", ip)
	}
	host, err := get(ctx, c, "local-hostname")
	var re *smithyhttp.ResponseError
	switch {
	case errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound:
	case err != nil:
		return Identity{}, err
	default:
		// One name; IMDS separates several with spaces.
		if f := strings.Fields(host); len(f) > 0 {
			id.LocalHostname = f[0]
		}
	}
	return id, nil
}

// maxValue bounds one metadata value read.
const maxValue = 4 << 10

// get reads meta-data/path, trimmed of surrounding white space.
func get(ctx context.Context, c Client, path string) (string, error) {
	out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", fmt.Errorf("ec2meta: reading %s from the EC2 instance metadata service (IMDSv2): %w", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, maxValue))
	if err != nil {
		return "", fmt.Errorf("ec2meta: reading %s from the EC2 instance metadata service (IMDSv2): %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}
