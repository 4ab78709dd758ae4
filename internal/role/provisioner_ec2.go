package role

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/memcache/memcache/deploy"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/pki"
	"github.com/memcache/memcache/scaler"
)

// EC2Options configures the ec2 provisioner of a manager replica.
type EC2Options struct {
	// EC2 is the provisioner's configuration; its UserData is filled in.
	EC2 scaler.EC2Config
	// Region is the AWS region; if blank, the SDK's default chain
	// (AWS_REGION, the shared config, the instance's IMDS).
	Region string
	// CAFile is the cluster CA the nodes trust (the manager's --tls-ca).
	CAFile string
	// NodeCertFile and NodeKeyFile are the certificate (role node) every
	// EC2 node presents and its key. Both are carried in the user-data.
	NodeCertFile, NodeKeyFile string
	// GossipKey and ClusterSecret are the cluster's, given to the nodes.
	GossipKey     []byte
	ClusterSecret string
	// BinaryURL and BinarySHA256: where the user-data downloads memcache
	// from; blank: the AMI has /usr/local/bin/memcache.
	BinaryURL, BinarySHA256 string
	// NodeEnv is written to the nodes' environment files (MEMCACHE_* flags,
	// AWS_* SDK settings).
	NodeEnv map[string]string
}

// EC2 is the ec2 provisioner: the leader launches pool nodes as tagged
// instances whose user-data installs and starts `memcache node`. The node
// certificate and key are read (and checked) when the replica starts.
func EC2(opts EC2Options) ProvisionerFunc {
	return func(g *gossip.Gossip, pool scaler.PoolState, log *slog.Logger) (scaler.Provisioner, error) {
		ca, cert, key, err := readNodeTLS(opts)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		loads := []func(*config.LoadOptions) error{
			// EC2's API throttles per account: back off up to 20 s over 8
			// attempts (the SDK retries RequestLimitExceeded) before the
			// provisioner reports it.
			config.WithRetryer(func() aws.Retryer {
				return retry.NewStandard(func(o *retry.StandardOptions) {
					o.MaxAttempts = 8
					o.MaxBackoff = 20 * time.Second
				})
			}),
		}
		if opts.Region != "" {
			loads = append(loads, config.WithRegion(opts.Region))
		} else {
			// On EC2, the region of the instance the manager runs on.
			loads = append(loads, config.WithEC2IMDSRegion())
		}
		awsCfg, err := config.LoadDefaultConfig(ctx, loads...)
		if err != nil {
			return nil, fmt.Errorf("ec2 provisioner: AWS configuration: %w", err)
		}
		env := maps.Clone(opts.NodeEnv)
		if _, ok := env["AWS_REGION"]; !ok && awsCfg.Region != "" {
			if env == nil {
				env = map[string]string{}
			}
			env["AWS_REGION"] = awsCfg.Region // the nodes' SDK (CloudWatch) does not look it up
		}
		cfg := opts.EC2
		cfg.UserData = func(member string, join []string) ([]byte, error) {
			return deploy.NodeUserData(deploy.NodeUserDataConfig{
				Name: member, Join: join, CA: ca, Cert: cert, Key: key,
				GossipKey: opts.GossipKey, ClusterSecret: opts.ClusterSecret,
				BinaryURL: opts.BinaryURL, BinarySHA256: opts.BinarySHA256, Env: env,
			})
		}
		return scaler.NewEC2(cfg, ec2.NewFromConfig(awsCfg), g, pool, log)
	}
}

// readNodeTLS reads the CA and the nodes' certificate and key, and checks
// that they pair, that the CA signed the certificate and that it is a node's.
func readNodeTLS(opts EC2Options) (ca, cert, key []byte, err error) {
	if opts.CAFile == "" || opts.NodeCertFile == "" || opts.NodeKeyFile == "" {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: the nodes need the cluster CA and a node certificate and key (--tls-ca, --ec2-node-tls-cert, --ec2-node-tls-key)")
	}
	if ca, err = os.ReadFile(opts.CAFile); err != nil {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: %w", err)
	}
	if cert, err = os.ReadFile(opts.NodeCertFile); err != nil {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: %w", err)
	}
	if key, err = os.ReadFile(opts.NodeKeyFile); err != nil {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: %w", err)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: node certificate %s and key %s: %w", opts.NodeCertFile, opts.NodeKeyFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: node certificate %s: %w", opts.NodeCertFile, err)
	}
	if r := pki.RoleOf(leaf); r != pki.RoleNode {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: certificate %s is a %q certificate, want a node's (memcache tls cert create --role node)", opts.NodeCertFile, r)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: %s holds no CA certificate", opts.CAFile)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, nil, nil, fmt.Errorf("ec2 provisioner: node certificate %s is not signed by the CA in %s: %w", opts.NodeCertFile, opts.CAFile, err)
	}
	return ca, cert, key, nil
}
