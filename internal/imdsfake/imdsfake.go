// Package imdsfake is an in-process EC2 instance metadata service (IMDSv2
// only) for tests, spoken to by aws-sdk-go-v2's feature/ec2/imds client.
//
// The wire protocol, as that client (v1.20.x) uses it:
//
//   - PUT /latest/api/token with header X-aws-ec2-metadata-token-ttl-seconds
//     (1..21600) answers a session token as the body, and echoes the TTL in
//     the same header (the SDK caches the token for that long). A missing or
//     out-of-range TTL is 400, as is a PUT carrying X-Forwarded-For (EC2
//     refuses tokens to requests that went through a proxy; it answers 403).
//   - GET /latest/meta-data/<path> and /latest/dynamic/<path> need header
//     X-aws-ec2-metadata-token with a live token; without one the answer is
//     401, as on an instance that requires IMDSv2 (HttpTokens=required). The
//     SDK answers a 401 by fetching a new token and retrying.
//   - An unknown path, or an Identity field left blank, is 404.
//
// Served: meta-data instance-id, local-ipv4, local-hostname, hostname,
// placement/region, placement/availability-zone (and the listings of
// meta-data/ and placement/), and dynamic/instance-identity/document, the
// JSON the SDK's GetInstanceIdentityDocument and GetRegion read.
//
// Point a client at it with imds.Options.Endpoint = URL(), or through the
// environment, AWS_EC2_METADATA_SERVICE_ENDPOINT=URL(), which
// config.LoadDefaultConfig and imds.New both read.
package imdsfake

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The protocol's paths and headers.
const (
	TokenPath      = "/latest/api/token"
	MetadataPrefix = "/latest/meta-data/"
	DynamicPrefix  = "/latest/dynamic/"
	TokenHeader    = "X-aws-ec2-metadata-token"
	TTLHeader      = "X-aws-ec2-metadata-token-ttl-seconds"
	// MaxTTL is the longest token lifetime IMDS grants, 6 hours.
	MaxTTL = 21600
)

// Identity is what the fake instance reports. A blank field is not served
// (404), as IMDS does for what an instance lacks.
type Identity struct {
	InstanceID       string // e.g. i-0123456789abcdef0
	LocalIPv4        string // the primary private IPv4 address
	LocalHostname    string // the private DNS name, e.g. ip-10-0-1-23.ec2.internal
	Region           string // e.g. us-east-1
	AvailabilityZone string // e.g. us-east-1a
	InstanceType     string // in the identity document only
	ImageID          string // in the identity document only
	AccountID        string // in the identity document only
}

// Server is a fake IMDS. Create it with New or NewOn; Close it when done.
type Server struct {
	srv *httptest.Server
	id  Identity

	mu       sync.Mutex           // guards the fields below
	tokens   map[string]time.Time // live token → expiry
	requests int
}

// New starts a server on 127.0.0.1 at a free port. Like
// httptest.NewServer, it panics if it cannot listen.
func New(id Identity) *Server {
	s, err := NewOn("127.0.0.1:0", id)
	if err != nil {
		panic(fmt.Sprintf("imdsfake: %v", err))
	}
	return s
}

// NewOn starts a server listening on addr (host:port; port 0 picks a free
// one), e.g. a test network's bridge address that hosts in other network
// namespaces reach.
func NewOn(addr string, id Identity) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("imdsfake: listen on %s: %w", addr, err)
	}
	s := &Server{id: id, tokens: map[string]time.Time{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serveHTTP))
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	return s, nil
}

// URL is the base URL to give a client: imds.Options.Endpoint, or
// AWS_EC2_METADATA_SERVICE_ENDPOINT.
func (s *Server) URL() string { return s.srv.URL }

// Close shuts the server down, waiting for requests in flight.
func (s *Server) Close() { s.srv.Close() }

// Requests is how many requests the server has answered, of any kind.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// ExpireTokens invalidates every token handed out, as a token's TTL running
// out would: the next request with one is answered 401.
func (s *Server) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()
	w.Header().Set("Server", "EC2ws")
	if r.URL.Path == TokenPath {
		s.serveToken(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !s.validToken(r.Header.Get(TokenHeader)) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	body, contentType, ok := s.lookup(r.URL.Path)
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	io.WriteString(w, body)
}

// serveToken answers PUT /latest/api/token.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get(TTLHeader))
	if err != nil || ttl < 1 || ttl > MaxTTL {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	b := make([]byte, 42)
	rand.Read(b) // never fails
	tok := base64.URLEncoding.EncodeToString(b)
	s.mu.Lock()
	s.tokens[tok] = time.Now().Add(time.Duration(ttl) * time.Second)
	s.mu.Unlock()
	w.Header().Set(TTLHeader, strconv.Itoa(ttl))
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, tok)
}

// validToken reports whether tok is a token handed out and not expired.
func (s *Server) validToken(tok string) bool {
	if tok == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[tok]
	if ok && time.Now().After(exp) {
		delete(s.tokens, tok)
		return false
	}
	return ok
}

// lookup returns the body and content type of the metadata at path.
func (s *Server) lookup(path string) (string, string, bool) {
	if p, ok := strings.CutPrefix(path, MetadataPrefix); ok {
		v, ok := s.metadata()[p]
		return v, "text/plain", ok && v != ""
	}
	if p, ok := strings.CutPrefix(path, DynamicPrefix); ok {
		switch p {
		case "":
			return "instance-identity/", "text/plain", true
		case "instance-identity/":
			return "document", "text/plain", true
		case "instance-identity/document":
			return s.document(), "text/plain", true
		}
	}
	return "", "", false
}

// metadata returns the meta-data tree: path → value, directories (ending
// in "/", and the root "") listing their entries, one a line.
func (s *Server) metadata() map[string]string {
	id := s.id
	m := map[string]string{
		"instance-id":                 id.InstanceID,
		"local-ipv4":                  id.LocalIPv4,
		"local-hostname":              id.LocalHostname,
		"hostname":                    id.LocalHostname,
		"instance-type":               id.InstanceType,
		"ami-id":                      id.ImageID,
		"placement/region":            id.Region,
		"placement/availability-zone": id.AvailabilityZone,
	}
	dirs := map[string][]string{}
	for p, v := range m {
		if v == "" {
			continue
		}
		dir, name := "", p
		if i := strings.LastIndex(p, "/"); i >= 0 {
			dir, name = p[:i+1], p[i+1:]
			dirs[""] = append(dirs[""], dir)
		}
		dirs[dir] = append(dirs[dir], name)
	}
	for dir, names := range dirs {
		slices.Sort(names)
		m[dir] = strings.Join(slices.Compact(names), "\n")
	}
	return m
}

// document is the instance identity document, formatted as IMDS does.
func (s *Server) document() string {
	id := s.id
	doc := struct {
		AccountID        string    `json:"accountId"`
		Architecture     string    `json:"architecture"`
		AvailabilityZone string    `json:"availabilityZone"`
		ImageID          string    `json:"imageId"`
		InstanceID       string    `json:"instanceId"`
		InstanceType     string    `json:"instanceType"`
		PendingTime      time.Time `json:"pendingTime"`
		PrivateIP        string    `json:"privateIp"`
		Region           string    `json:"region"`
		Version          string    `json:"version"`
	}{
		AccountID: id.AccountID, Architecture: "x86_64", AvailabilityZone: id.AvailabilityZone,
		ImageID: id.ImageID, InstanceID: id.InstanceID, InstanceType: id.InstanceType,
		PendingTime: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), PrivateIP: id.LocalIPv4,
		Region: id.Region, Version: "2017-09-30",
	}
	b, _ := json.MarshalIndent(doc, "", "  ")
	return string(b)
}
