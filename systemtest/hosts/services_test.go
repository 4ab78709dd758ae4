package hosts

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/lib/pq"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/internal/pgtest"
	"github.com/memcache/memcache/internal/s3test"
	"github.com/memcache/memcache/internal/systemd"
)

// What deploy/provision.sh sets up on the services host and derives for a
// frontend from SERVICES_ADDR.
const (
	postgresPort = 5432
	s3Port       = 7070
	dbName       = "memcache" // database and user
	s3Bucket     = "memcache"
	s3Region     = "us-east-1"
	// s3Prefix is the frontend's --s3-prefix default, which provision.sh
	// leaves alone.
	s3Prefix = "memcache/"
)

// serviceStores are the services host's stores as the test process sees
// them, over the bridge, with the frontend's credentials.
type serviceStores struct {
	db *sql.DB    // database memcache as user memcache, sslmode=require
	s3 *s3.Client // versitygw's root account (s3-access, s3-secret)
}

// startServices starts the frontend's stores on the services host, as
// deploy/provision.sh services sets them up on the Vagrant one: PostgreSQL
// on its address, port 5432, with TLS, database and user memcache and
// password authentication from the bridge's subnet; and versitygw on port
// 7070, installed by provision.sh and started as its unit would start it,
// with the keys of the secrets step and the bucket memcache. It returns once
// both answer the test process over the bridge; from then on the frontend
// is given SERVICES_ADDR (frontendStoreEnv), so call it before start.
//
// Without PostgreSQL or versitygw it skips the test, or fails it if
// MEMCACHE_TEST_REQUIRE_POSTGRES=1 or MEMCACHE_TEST_REQUIRE_S3=1.
func (s *system) startServices() {
	s.t.Helper()
	cluster := pgtest.InitCluster(s.t)
	vgw := s3test.Binary(s.t)
	begin := time.Now()
	s.serviceStores = &serviceStores{db: s.startPostgres(cluster), s3: s.startVersitygw(vgw)}
	s.t.Logf("services on %s (%s): PostgreSQL :%d, versitygw :%d with bucket %s, up in %v",
		s.services, s.services.Addr(), postgresPort, s3Port, s3Bucket, time.Since(begin).Round(time.Millisecond))
}

// secret returns the secrets step's file name, trimmed.
func (s *system) secret(name string) string {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.secretsDir, name))
	if err != nil {
		s.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// startPostgres runs the server of cluster on the services host and
// creates user and database memcache with the secrets step's password. It
// returns a connection to that database from the test process, as the
// frontend connects: over the bridge, with TLS, by password.
func (s *system) startPostgres(cluster pgtest.Cluster) *sql.DB {
	t := s.t
	t.Helper()
	// Debian's PostgreSQL, on the Vagrant services host, has TLS on with
	// its snakeoil certificate; this one gets a self-signed one, so that
	// provision.sh's sslmode=require is met (and not verified) alike.
	if err := writeServerCert(cluster, s.services.Addr().String()); err != nil {
		t.Fatalf("PostgreSQL server certificate: %v", err)
	}
	hba, err := os.OpenFile(filepath.Join(cluster.Data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(hba, "host %s %s %s scram-sha-256\n", dbName, dbName, s.net.Subnet())
	if cerr := hba.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	prog := filepath.Join(cluster.Bin, "postgres")
	args := []string{"-D", cluster.Data, "-k", cluster.Sock, "-p", strconv.Itoa(postgresPort),
		"-c", "listen_addresses=" + s.services.Addr().String(), "-c", "ssl=on",
		"-c", "password_encryption=scram-sha-256",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"}
	if c := cluster.Cred; c != nil {
		// ip netns exec needs root, and PostgreSQL refuses it: drop to the
		// cluster's user once inside the namespace. setpriv execs (the
		// process stays the server, which gets the cleanup's signals) and
		// keeps the parent-death signal a change of user would clear.
		args = append([]string{fmt.Sprintf("--reuid=%d", c.Uid), fmt.Sprintf("--regid=%d", c.Gid),
			"--clear-groups", "--pdeathsig=keep", "--", prog}, args...)
		prog = "setpriv"
	}
	cmd := s.services.Command(context.Background(), prog, args...)
	cmd.Dir = cluster.Dir
	p := s.services.StartCmd(cmd)
	s.procs["postgres"] = p // waitFor fails as soon as it exits
	// SIGTERM, netns's stop, is PostgreSQL's smart shutdown, which waits
	// for clients; a fast shutdown (SIGINT) first. Registered after
	// StartCmd, so it runs before netns's cleanup.
	t.Cleanup(func() {
		p.Signal(syscall.SIGINT)
		select {
		case <-p.Exited():
		case <-time.After(wait):
		}
	})

	// Set up over the Unix socket, as the superuser initdb made (trust).
	admin, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable",
		cluster.Sock, postgresPort))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	s.waitFor(startWait, "PostgreSQL on the services host to accept connections", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return admin.PingContext(ctx)
	})
	// Neither statement takes parameters; the password is quoted.
	for _, q := range []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD %s", pq.QuoteIdentifier(dbName), pq.QuoteLiteral(s.secret("postgres-password"))),
		fmt.Sprintf("CREATE DATABASE %s OWNER %s", pq.QuoteIdentifier(dbName), pq.QuoteIdentifier(dbName)),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		_, err := admin.ExecContext(ctx, q)
		cancel()
		if err != nil {
			t.Fatalf("PostgreSQL setup: %v", err)
		}
	}

	// The frontend's way in: provision.sh's DSN for SERVICES_ADDR.
	u := url.URL{Scheme: "postgres", User: url.UserPassword(dbName, s.secret("postgres-password")),
		Host: s.services.HostPort(postgresPort), Path: "/" + dbName, RawQuery: "sslmode=require"}
	db, err := sql.Open("postgres", u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() }) // before the server stops
	s.waitFor(wait, "PostgreSQL to accept user memcache over the bridge with TLS", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var ssl bool
		if err := db.QueryRowContext(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
			return err
		}
		if !ssl {
			return errors.New("connection without TLS")
		}
		return nil
	})
	return db
}

// writeServerCert writes a self-signed certificate for host, and its key,
// as server.crt and server.key into the cluster's data directory (where
// ssl=on looks for them), owned by the server's user.
func writeServerCert(cluster pgtest.Cluster, host string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	files := []struct {
		name  string
		block *pem.Block
	}{
		{"server.crt", &pem.Block{Type: "CERTIFICATE", Bytes: der}},
		{"server.key", &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}},
	}
	for _, f := range files {
		p := filepath.Join(cluster.Data, f.name)
		if err := os.WriteFile(p, pem.EncodeToMemory(f.block), 0o600); err != nil {
			return err
		}
		if c := cluster.Cred; c != nil {
			if err := os.Chown(p, int(c.Uid), int(c.Gid)); err != nil {
				return err
			}
		}
	}
	return nil
}

// startVersitygw installs versitygw on the services host with provision.sh
// services (which, under a PREFIX, leaves PostgreSQL alone), starts it as
// versitygw.service would, inside the host, and creates the bucket, as the
// step does on a live host. It returns a client of the gateway's root
// account.
func (s *system) startVersitygw(bin string) *s3.Client {
	t := s.t
	t.Helper()
	root := s.root(s.services)
	s.provision("services", []string{"PREFIX=" + root, "PRIVATE_ADDR=" + s.services.Addr().String(),
		"PRIVATE_NET=" + s.net.Subnet().String(), "VERSITYGW_BIN=" + bin})
	cmd, err := systemd.Command(root, "versitygw.service", bin)
	if err != nil {
		t.Fatal(err)
	}
	in := s.services.Command(context.Background(), cmd.Path, cmd.Args[1:]...)
	in.Env, in.Dir = cmd.Env, cmd.Dir
	s.procs["versitygw"] = s.services.StartCmd(in)

	client := s3.New(s3.Options{
		Region:       s3Region,
		BaseEndpoint: aws.String("http://" + s.services.HostPort(s3Port)),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.secret("s3-access"), s.secret("s3-secret"), ""),
	})
	bucket := blob.NewS3WithClient(client, blob.S3Config{Bucket: s3Bucket, Region: s3Region})
	s.waitFor(startWait, "versitygw on the services host to create bucket "+s3Bucket, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := bucket.CreateBucket(ctx); err != nil {
			return err
		}
		_, err := client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s3Bucket)})
		return err
	})
	return client
}

// checkStored checks, from the test process, that key was stored in the
// services host's stores: its row in PostgreSQL, with data's size and
// SHA-256, and the object the row names in versitygw, holding data.
func (s *system) checkStored(key string, data []byte) {
	t := s.t
	t.Helper()
	st := s.serviceStores
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var (
		object, sum string
		size        int64
	)
	err := st.db.QueryRowContext(ctx, "SELECT object, size, sha256 FROM images WHERE key = $1", key).Scan(&object, &size, &sum)
	if err != nil {
		t.Fatalf("PostgreSQL on %s: row of %q: %v", s.services, key, err)
	}
	want := sha256.Sum256(data)
	if size != int64(len(data)) || sum != hex.EncodeToString(want[:]) {
		t.Fatalf("PostgreSQL row of %q: size %d, sha256 %s; want %d, %x", key, size, sum, len(data), want)
	}
	name := s3Prefix + object
	out, err := st.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(name)})
	if err != nil {
		t.Fatalf("versitygw on %s: object s3://%s/%s of %q: %v", s.services, s3Bucket, name, key, err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("s3://%s/%s: got %d bytes (%v), want the %d uploaded", s3Bucket, name, len(got), err, len(data))
	}
	t.Logf("%q: row in PostgreSQL on %s, object s3://%s/%s in versitygw", key, s.services, s3Bucket, name)
}
