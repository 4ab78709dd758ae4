package ec2meta_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/ec2meta"
	"github.com/memcache/memcache/internal/imdsfake"
)

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name     string
		identity imdsfake.Identity
		want     ec2meta.Identity
		host     string
	}{
		{
			name:     "with a host name",
			identity: imdsfake.Identity{InstanceID: "i-0abc", LocalIPv4: "10.0.1.23", LocalHostname: "ip-10-0-1-23.ec2.internal"},
			want:     ec2meta.Identity{InstanceID: "i-0abc", LocalIPv4: netip.MustParseAddr("10.0.1.23"), LocalHostname: "ip-10-0-1-23.ec2.internal"},
			host:     "ip-10-0-1-23.ec2.internal",
		},
		{
			name:     "without a host name",
			identity: imdsfake.Identity{InstanceID: "i-0def", LocalIPv4: "10.0.1.24"},
			want:     ec2meta.Identity{InstanceID: "i-0def", LocalIPv4: netip.MustParseAddr("10.0.1.24")},
			host:     "10.0.1.24",
		},
		{
			name:     "several host names",
			identity: imdsfake.Identity{InstanceID: "i-0aaa", LocalIPv4: "10.0.1.25", LocalHostname: "ip-10-0-1-25.ec2.internal ip-10-0-1-25.example"},
			want:     ec2meta.Identity{InstanceID: "i-0aaa", LocalIPv4: netip.MustParseAddr("10.0.1.25"), LocalHostname: "ip-10-0-1-25.ec2.internal"},
			host:     "ip-10-0-1-25.ec2.internal",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := imdsfake.New(tc.identity)
			defer s.Close()
			got, err := ec2meta.Read(t.Context(), ec2meta.Config{Endpoint: s.URL()})
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if got.Host() != tc.host {
				t.Errorf("Host: got %q, want %q", got.Host(), tc.host)
			}
			if u, want := got.URL("https", 7100), "https://"+tc.host+":7100"; u != want {
				t.Errorf("URL: got %q, want %q", u, want)
			}
		})
	}
}

func TestReadFails(t *testing.T) {
	down := imdsfake.New(imdsfake.Identity{})
	downURL := down.URL()
	down.Close()
	for _, tc := range []struct {
		name     string
		identity *imdsfake.Identity // nil: the service is down
		want     []string
	}{
		{"service down", nil, []string{"instance metadata service", "instance-id", downURL}},
		{"no instance id", &imdsfake.Identity{LocalIPv4: "10.0.0.1"}, []string{"instance metadata service", "instance-id", "404"}},
		{"no address", &imdsfake.Identity{InstanceID: "i-1"}, []string{"instance metadata service", "local-ipv4"}},
		{"IPv6 address", &imdsfake.Identity{InstanceID: "i-1", LocalIPv4: "fd00::1"}, []string{"instance metadata service", "local-ipv4", "not an IPv4 address"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			endpoint := downURL
			if tc.identity != nil {
				s := imdsfake.New(*tc.identity)
				defer s.Close()
				endpoint = s.URL()
			}
			start := time.Now()
			id, err := ec2meta.Read(t.Context(), ec2meta.Config{Endpoint: endpoint, Timeout: 5 * time.Second})
			if err == nil {
				t.Fatalf("got %+v, want an error", id)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if d := time.Since(start); d > 6*time.Second {
				t.Errorf("failed after %v, want within the 5 s timeout", d)
			}
		})
	}
}
