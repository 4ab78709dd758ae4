package blob

import (
	"testing"

	"github.com/memcache/memcache/internal/s3test"
)

func TestS3Versitygw(t *testing.T) {
	srv := s3test.Start(t)
	testS3Backend(t, srv.Endpoint, srv.AccessKey, srv.SecretKey)
}
