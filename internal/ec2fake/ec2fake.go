// Package ec2fake is an in-process EC2 server for tests that speaks the EC2
// Query protocol the real aws-sdk-go-v2/service/ec2 client uses.
//
// Every call is a form-encoded POST to / with Action=<Op> and
// Version=2016-11-15; lists are flattened as Name.N (from 1) and structure
// members as Name.Member. Answers are XML documents <OpResponse> in the
// namespace http://ec2.amazonaws.com/doc/2016-11-15/ whose lists are
// <xxxSet><item>; errors are <Response><Errors><Error><Code/><Message/>
// </Error></Errors><RequestID/></Response> with EC2's HTTP status (400 for
// client errors, 401 AuthFailure, 403 UnauthorizedOperation, 412
// DryRunOperation, 500 InternalError and Insufficient*Capacity, 503
// RequestLimitExceeded and Unavailable). A request must carry a SigV4
// Authorization header whose credential scope names the service ec2; the
// signature itself is not checked.
//
// Implemented, with EC2's validation and error codes:
//   - RunInstances: ImageId or LaunchTemplate (LaunchTemplateId or
//     LaunchTemplateName, Version accepted), InstanceType, MinCount/MaxCount
//     (MaxCount instances are launched, at most 1000), SubnetId,
//     SecurityGroupId.N, IamInstanceProfile.Name/Arn, UserData (base64, at
//     most 16 KiB decoded), TagSpecification.N (tags of resource type
//     "instance" become the instance's; other types are validated only),
//     MetadataOptions.HttpTokens, ClientToken (a repeated token answers the
//     first reservation and launches nothing; different parameters under it
//     are IdempotentParameterMismatch) and DryRun. Other parameters are
//     accepted and ignored. Instances start pending, with private addresses
//     taken in order from .10 of 10.0.0.0/16 (see SetAddresses).
//   - DescribeInstances: InstanceId.N, Filter.N for tag:KEY, tag-key,
//     instance-state-name and instance-id (exact values, no wildcards),
//     MaxResults (5..1000, not with InstanceId; pages count instances) and
//     NextToken. A pending instance becomes running in the first answer that
//     includes it (filters see it as running); a shutting-down instance is
//     shown so once, then terminated. Terminated instances stay visible.
//   - TerminateInstances: InstanceId.N and DryRun.
//   - CreateTags: ResourceId.N (instances only), Tag.N.Key/Value, DryRun.
//
// Every other action is InvalidAction. A refused request changes nothing.
package ec2fake

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Namespace is the XML namespace of every EC2 answer.
const Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// APIVersion is the Version every request must name.
const APIVersion = "2016-11-15"

// OwnerID is the account that owns every reservation.
const OwnerID = "123456789012"

const (
	maxBody     = 1 << 20  // request body bound
	maxUserData = 16 << 10 // EC2's limit on decoded user data
	maxLaunch   = 1000     // MaxCount bound
)

var stateCodes = map[string]int{
	"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80,
}

var launchTagTypes = map[string]bool{
	"instance": true, "volume": true, "network-interface": true, "spot-instances-request": true,
}

// Instance is an instance as the server holds it. InstanceProfile is the
// IamInstanceProfile Arn if the launch gave one, else its Name;
// LaunchTemplate is the LaunchTemplateId or LaunchTemplateName (the Version is
// not kept); fields the launch did not give are blank.
type Instance struct {
	ID, ImageID, InstanceType, SubnetID, PrivateIP, InstanceProfile, LaunchTemplate, ClientToken string

	SecurityGroups []string
	State          string // pending, running, shutting-down, terminated (or stopping, stopped)
	Tags           map[string]string
	UserData       []byte // decoded from base64
	HTTPTokens     string // MetadataOptions.HttpTokens ("required" for IMDSv2-only), as requested
	LaunchTime     time.Time
}

// Server is a fake EC2. Its zero value is not usable; call New or NewOn.
type Server struct {
	srv      *httptest.Server
	launches sync.WaitGroup // OnLaunch callbacks in flight

	mu           sync.Mutex // guards the fields below
	instances    []*instance
	byID         map[string]*instance
	reservations map[string][]*instance
	tokens       map[string]launch // ClientToken → the launch it made
	calls        map[string]int
	fails        map[string]failure
	onLaunch     func(Instance)
	prefix       netip.Prefix
	next         netip.Addr // next private address to hand out
}

type instance struct {
	Instance
	reservation string
	index       int  // amiLaunchIndex
	seen        bool // a describe has shown it shutting-down
}

type launch struct{ form, reservation string }

type failure struct {
	code string
	n    int
}

// New starts a server on 127.0.0.1 and a free port. Close it when done.
func New() *Server {
	s, err := NewOn("127.0.0.1:0")
	if err != nil {
		panic("ec2fake: " + err.Error())
	}
	return s
}

// NewOn starts a server listening on addr (host:port). Close it when done.
func NewOn(addr string) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{
		byID:         make(map[string]*instance),
		reservations: make(map[string][]*instance),
		tokens:       make(map[string]launch),
		calls:        make(map[string]int),
		fails:        make(map[string]failure),
	}
	s.SetAddresses(netip.MustParsePrefix("10.0.0.0/16"))
	s.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(s.serveHTTP)}}
	s.srv.Start()
	return s, nil
}

// URL is the base URL to give the SDK client as BaseEndpoint.
func (s *Server) URL() string { return s.srv.URL }

// Close shuts the server down, waiting for requests in flight and for OnLaunch
// callbacks (which therefore must not call Close).
func (s *Server) Close() {
	s.srv.Close()
	s.launches.Wait()
}

// SetAddresses makes later launches take private addresses in order from .10
// of prefix (the tenth address after its base). A launch that would run past
// prefix fails with InsufficientFreeAddressesInSubnet. It panics on an
// invalid prefix.
func (s *Server) SetAddresses(prefix netip.Prefix) {
	if !prefix.IsValid() {
		panic("ec2fake: SetAddresses: invalid prefix")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prefix = prefix.Masked()
	s.next = s.prefix.Addr()
	for range 10 {
		s.next = s.next.Next()
	}
}

// SetOnLaunch makes the server call f, in a goroutine of its own, for each
// instance a RunInstances call created, after the answer was written. nil
// turns it off.
func (s *Server) SetOnLaunch(f func(Instance)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onLaunch = f
}

// Fail makes the next n calls of action answer the error code (with its EC2
// HTTP status) and do nothing else; n < 0 fails every call until
// Fail(action, "", 0). A blank code or n == 0 clears the failure.
func (s *Server) Fail(action, code string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if code == "" || n == 0 {
		delete(s.fails, action)
		return
	}
	s.fails[action] = failure{code, n}
}

// Calls is how many requests of action the server received, refused and
// failed ones included.
func (s *Server) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

// Instances returns a copy of every instance ever launched or added, in
// launch order.
func (s *Server) Instances() []Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Instance, len(s.instances))
	for i, in := range s.instances {
		out[i] = in.export()
	}
	return out
}

// Instance returns a copy of the instance with the given id.
func (s *Server) Instance(id string) (Instance, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.byID[id]
	if !ok {
		return Instance{}, false
	}
	return in.export(), true
}

// Add records an instance launched by someone else (a previous leader, say)
// in a reservation of its own and returns it as stored: a blank ID, PrivateIP
// or LaunchTime is filled in, and a blank State is running. It panics if the
// ID is already known, the State is not an EC2 state or no address is left.
func (s *Server) Add(in Instance) Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.ID == "" {
		in.ID = s.newID("i")
	} else if _, ok := s.byID[in.ID]; ok {
		panic("ec2fake: Add: instance " + in.ID + " already exists")
	}
	if in.State == "" {
		in.State = "running"
	} else if _, ok := stateCodes[in.State]; !ok {
		panic("ec2fake: Add: unknown state " + in.State)
	}
	if in.PrivateIP == "" {
		ips, err := s.allocate(1)
		if err != nil {
			panic("ec2fake: Add: " + err.Error())
		}
		in.PrivateIP = ips[0]
	}
	if in.LaunchTime.IsZero() {
		in.LaunchTime = time.Now().UTC().Truncate(time.Second)
	}
	added := &instance{Instance: in, reservation: s.newID("r")}
	added.Instance = added.export() // own copies of the caller's slices and map
	s.store(added)
	return added.export()
}

// SetState moves an instance to state, one of EC2's: pending, running,
// shutting-down, terminated, stopping, stopped. It panics on an unknown id or
// state.
func (s *Server) SetState(id, state string) {
	if _, ok := stateCodes[state]; !ok {
		panic("ec2fake: SetState: unknown state " + state)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.byID[id]
	if !ok {
		panic("ec2fake: SetState: no instance " + id)
	}
	in.State, in.seen = state, false
}

func (in *instance) export() Instance {
	c := in.Instance
	c.SecurityGroups = slices.Clone(c.SecurityGroups)
	c.Tags = maps.Clone(c.Tags)
	c.UserData = slices.Clone(c.UserData)
	return c
}

// store appends in; s.mu must be held.
func (s *Server) store(in *instance) {
	s.instances = append(s.instances, in)
	s.byID[in.ID] = in
	s.reservations[in.reservation] = append(s.reservations[in.reservation], in)
}

// newID returns an unused instance (kind "i") or reservation ("r") id; s.mu
// must be held.
func (s *Server) newID(kind string) string {
	for {
		id := fmt.Sprintf("%s-0%016x", kind, rand.Uint64())
		_, i := s.byID[id]
		_, r := s.reservations[id]
		if !i && !r {
			return id
		}
	}
}

// allocate takes n private addresses, all or none; s.mu must be held.
func (s *Server) allocate(n int) ([]string, *apiError) {
	ips := make([]string, 0, n)
	a := s.next
	for range n {
		if !a.IsValid() || !s.prefix.Contains(a) {
			return nil, errf(http.StatusBadRequest, "InsufficientFreeAddressesInSubnet",
				"There are not enough free addresses in %s to satisfy the requested number of instances.", s.prefix)
		}
		ips = append(ips, a.String())
		a = a.Next()
	}
	s.next = a
	return ips, nil
}

// --- protocol ---

// apiError is an error the server answers with.
type apiError struct {
	status    int
	code, msg string
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status, code, fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *apiError {
	return errf(http.StatusBadRequest, "InvalidParameterValue", format, args...)
}

func missing(name string) *apiError {
	return errf(http.StatusBadRequest, "MissingParameter", "The request must contain the parameter %s", name)
}

func notFound(id string) *apiError {
	return errf(http.StatusBadRequest, "InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", id)
}

var errDryRun = errf(http.StatusPreconditionFailed, "DryRunOperation", "Request would have succeeded, but DryRun flag is set.")

// statusOf is the HTTP status EC2 answers code with.
func statusOf(code string) int {
	switch code {
	case "AuthFailure":
		return http.StatusUnauthorized
	case "UnauthorizedOperation", "Blocked", "OptInRequired":
		return http.StatusForbidden
	case "DryRunOperation":
		return http.StatusPreconditionFailed
	case "RequestLimitExceeded", "Unavailable", "ServiceUnavailable":
		return http.StatusServiceUnavailable
	case "InternalError", "InsufficientInstanceCapacity", "InsufficientCapacity",
		"InsufficientAddressCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity":
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

// answer is an XML answer; every one starts with the request id.
type answer interface{ setRequestID(string) }

type header struct {
	RequestID string `xml:"requestId"`
}

func (h *header) setRequestID(id string) { h.RequestID = id }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rand.Uint32(), rand.Uint32()&0xffff,
		rand.Uint32()&0xffff, rand.Uint32()&0xffff, rand.Uint64()&0xffffffffffff)
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		writeError(w, reqID, invalid("cannot read the form: %v", err))
		return
	}
	p := params(r.Form)
	action := p.get("Action")
	s.mu.Lock()
	s.calls[action]++
	s.mu.Unlock()
	if err := checkAuth(r.Header.Get("Authorization")); err != nil {
		writeError(w, reqID, err)
		return
	}
	if err := s.takeFailure(action); err != nil {
		writeError(w, reqID, err)
		return
	}
	if v := p.get("Version"); v != APIVersion {
		writeError(w, reqID, invalid("Version %q is not supported; ec2fake speaks %s", v, APIVersion))
		return
	}
	var (
		out      answer
		launched []Instance
		err      *apiError
	)
	switch action {
	case "RunInstances":
		out, launched, err = s.runInstances(p)
	case "DescribeInstances":
		out, err = s.describeInstances(p)
	case "TerminateInstances":
		out, err = s.terminateInstances(p)
	case "CreateTags":
		out, err = s.createTags(p)
	default:
		err = errf(http.StatusBadRequest, "InvalidAction", "The action %q is not valid for this web service.", action)
	}
	if err != nil {
		writeError(w, reqID, err)
		return
	}
	out.setRequestID(reqID)
	writeXML(w, http.StatusOK, xml.StartElement{
		Name: xml.Name{Local: action + "Response"},
		Attr: []xml.Attr{{Name: xml.Name{Local: "xmlns"}, Value: Namespace}},
	}, out)
	s.mu.Lock()
	f := s.onLaunch
	s.mu.Unlock()
	if f == nil || len(launched) == 0 {
		return
	}
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	for _, in := range launched {
		s.launches.Go(func() { f(in) })
	}
}

// checkAuth refuses a request without a SigV4 Authorization header for ec2.
func checkAuth(h string) *apiError {
	alg, rest, _ := strings.Cut(h, " ")
	if alg != "AWS4-HMAC-SHA256" {
		return errf(http.StatusUnauthorized, "AuthFailure", "AWS was not able to validate the provided access credentials (no SigV4 Authorization header)")
	}
	for f := range strings.SplitSeq(rest, ",") {
		cred, ok := strings.CutPrefix(strings.TrimSpace(f), "Credential=")
		if !ok {
			continue
		}
		if scope := strings.Split(cred, "/"); len(scope) == 5 && scope[3] == "ec2" && scope[4] == "aws4_request" {
			return nil
		}
		return errf(http.StatusUnauthorized, "AuthFailure", "credential scope %q does not name the service ec2", cred)
	}
	return errf(http.StatusUnauthorized, "AuthFailure", "the Authorization header has no Credential")
}

// takeFailure consumes one injected failure of action, if any.
func (s *Server) takeFailure(action string) *apiError {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.fails[action]
	if !ok {
		return nil
	}
	if f.n > 0 {
		if f.n--; f.n == 0 {
			delete(s.fails, action)
		} else {
			s.fails[action] = f
		}
	}
	return errf(statusOf(f.code), f.code, "%s (injected by ec2fake)", f.code)
}

func writeError(w http.ResponseWriter, reqID string, e *apiError) {
	type xmlError struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	writeXML(w, e.status, xml.StartElement{Name: xml.Name{Local: "Response"}}, struct {
		Errors    []xmlError `xml:"Errors>Error"`
		RequestID string     `xml:"RequestID"`
	}{[]xmlError{{e.code, e.msg}}, reqID})
}

func writeXML(w http.ResponseWriter, status int, root xml.StartElement, v any) {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	if err := xml.NewEncoder(&b).EncodeElement(v, root); err != nil {
		http.Error(w, "ec2fake: encoding the answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// params is a request's form with EC2 Query's list conventions.
type params url.Values

func (p params) get(k string) string { return url.Values(p).Get(k) }

func (p params) has(k string) bool { return url.Values(p).Has(k) }

// indices is the sorted list indices N of the keys prefix.N and prefix.N.*.
func (p params) indices(prefix string) ([]string, *apiError) {
	seen := make(map[int]bool)
	for k := range p {
		rest, ok := strings.CutPrefix(k, prefix+".")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ".")
		i, err := strconv.Atoi(n)
		if err != nil || i < 1 {
			return nil, invalid("%s: %q is not a list member", prefix, k)
		}
		seen[i] = true
	}
	var out []string
	for _, i := range slices.Sorted(maps.Keys(seen)) {
		out = append(out, prefix+"."+strconv.Itoa(i))
	}
	return out, nil
}

// strs is the string list prefix.N.
func (p params) strs(prefix string) ([]string, *apiError) {
	keys, err := p.indices(prefix)
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = p.get(k)
	}
	return out, err
}

// int is the integer k, which must be present.
func (p params) int(k string) (int, *apiError) {
	if !p.has(k) {
		return 0, missing(k)
	}
	n, err := strconv.Atoi(p.get(k))
	if err != nil {
		return 0, invalid("Value (%s) for parameter %s is invalid. It must be an integer.", p.get(k), k)
	}
	return n, nil
}

func (p params) dryRun() bool { return p.get("DryRun") == "true" }

// tags parses prefix.N.Key/Value as EC2 validates tags.
func (p params) tags(prefix string) (map[string]string, *apiError) {
	keys, err := p.indices(prefix)
	if err != nil {
		return nil, err
	}
	tags := make(map[string]string, len(keys))
	for _, k := range keys {
		key, value := p.get(k+".Key"), p.get(k+".Value")
		switch {
		case key == "":
			return nil, invalid("%s.Key must not be empty", k)
		case strings.HasPrefix(strings.ToLower(key), "aws:"):
			return nil, invalid("Tag key %q: keys starting with 'aws:' are reserved for internal use", key)
		}
		if _, dup := tags[key]; dup {
			return nil, invalid("Duplicate tag key %q in %s", key, prefix)
		}
		tags[key] = value
	}
	return tags, nil
}

// --- answers ---

type xmlState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

func stateOf(name string) xmlState { return xmlState{stateCodes[name], name} }

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlGroup struct {
	GroupID string `xml:"groupId"`
}

type xmlProfile struct {
	Arn string `xml:"arn"`
	ID  string `xml:"id"`
}

type xmlMetadata struct {
	State        string `xml:"state"`
	HTTPTokens   string `xml:"httpTokens"`
	HopLimit     int    `xml:"httpPutResponseHopLimit"`
	HTTPEndpoint string `xml:"httpEndpoint"`
}

type xmlInstance struct {
	InstanceID     string      `xml:"instanceId"`
	ImageID        string      `xml:"imageId,omitempty"`
	State          xmlState    `xml:"instanceState"`
	PrivateDNSName string      `xml:"privateDnsName,omitempty"`
	LaunchIndex    int         `xml:"amiLaunchIndex"`
	InstanceType   string      `xml:"instanceType,omitempty"`
	LaunchTime     string      `xml:"launchTime"`
	SubnetID       string      `xml:"subnetId,omitempty"`
	PrivateIP      string      `xml:"privateIpAddress"`
	Groups         []xmlGroup  `xml:"groupSet>item"`
	Profile        *xmlProfile `xml:"iamInstanceProfile"`
	Tags           []xmlTag    `xml:"tagSet>item"`
	ClientToken    string      `xml:"clientToken,omitempty"`
	Metadata       xmlMetadata `xml:"metadataOptions"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

func (in *instance) xml() xmlInstance {
	x := xmlInstance{
		InstanceID: in.ID, ImageID: in.ImageID, State: stateOf(in.State), LaunchIndex: in.index,
		InstanceType: in.InstanceType, LaunchTime: in.LaunchTime.UTC().Format("2006-01-02T15:04:05.000Z"),
		SubnetID: in.SubnetID, PrivateIP: in.PrivateIP, ClientToken: in.ClientToken,
		Metadata: xmlMetadata{State: "applied", HTTPTokens: in.HTTPTokens, HopLimit: 2, HTTPEndpoint: "enabled"},
	}
	if a, err := netip.ParseAddr(in.PrivateIP); err == nil && a.Is4() {
		x.PrivateDNSName = "ip-" + strings.ReplaceAll(in.PrivateIP, ".", "-") + ".ec2.internal"
	}
	if x.Metadata.HTTPTokens == "" {
		x.Metadata.HTTPTokens = "optional"
	}
	for _, g := range in.SecurityGroups {
		x.Groups = append(x.Groups, xmlGroup{g})
	}
	if p := in.InstanceProfile; p != "" {
		if !strings.HasPrefix(p, "arn:") {
			p = "arn:aws:iam::" + OwnerID + ":instance-profile/" + p
		}
		x.Profile = &xmlProfile{Arn: p, ID: "AIPA" + strings.ToUpper(in.ID[2:])}
	}
	for _, k := range slices.Sorted(maps.Keys(in.Tags)) {
		x.Tags = append(x.Tags, xmlTag{k, in.Tags[k]})
	}
	return x
}

// reservationsOf groups instances by reservation in first-seen order.
func reservationsOf(ins []*instance) []xmlReservation {
	var out []xmlReservation
	at := make(map[string]int)
	for _, in := range ins {
		i, ok := at[in.reservation]
		if !ok {
			i = len(out)
			at[in.reservation] = i
			out = append(out, xmlReservation{ReservationID: in.reservation, OwnerID: OwnerID})
		}
		out[i].Instances = append(out[i].Instances, in.xml())
	}
	return out
}

// --- actions ---

type runInstancesResponse struct {
	header
	xmlReservation
}

func (s *Server) runInstances(p params) (answer, []Instance, *apiError) {
	lo, err := p.int("MinCount")
	if err != nil {
		return nil, nil, err
	}
	hi, err := p.int("MaxCount")
	switch {
	case err != nil:
		return nil, nil, err
	case lo < 1:
		return nil, nil, invalid("Value (%d) for parameter minCount is invalid. Expected a positive integer.", lo)
	case lo > hi:
		return nil, nil, invalid("MinCount (%d) must not exceed MaxCount (%d)", lo, hi)
	case hi > maxLaunch:
		return nil, nil, invalid("MaxCount %d is more than ec2fake launches at once (%d)", hi, maxLaunch)
	}
	tmplID, tmplName := p.get("LaunchTemplate.LaunchTemplateId"), p.get("LaunchTemplate.LaunchTemplateName")
	if tmplID != "" && tmplName != "" {
		return nil, nil, errf(http.StatusBadRequest, "InvalidParameterCombination", "LaunchTemplate: give LaunchTemplateId or LaunchTemplateName, not both")
	}
	in := Instance{
		ImageID: p.get("ImageId"), InstanceType: p.get("InstanceType"), SubnetID: p.get("SubnetId"),
		LaunchTemplate: tmplID + tmplName, ClientToken: p.get("ClientToken"),
		InstanceProfile: p.get("IamInstanceProfile.Arn"), HTTPTokens: p.get("MetadataOptions.HttpTokens"),
		State: "pending", LaunchTime: time.Now().UTC().Truncate(time.Second),
	}
	if in.LaunchTemplate == "" && p.get("LaunchTemplate.Version") != "" {
		return nil, nil, missing("LaunchTemplate.LaunchTemplateId")
	}
	if in.ImageID == "" && in.LaunchTemplate == "" {
		return nil, nil, missing("ImageId")
	}
	if in.InstanceProfile == "" {
		in.InstanceProfile = p.get("IamInstanceProfile.Name")
	}
	if t := in.HTTPTokens; t != "" && t != "optional" && t != "required" {
		return nil, nil, invalid("Value (%s) for parameter MetadataOptions.HttpTokens is invalid: optional or required", t)
	}
	if len(in.ClientToken) > 64 {
		return nil, nil, invalid("ClientToken is longer than 64 characters")
	}
	if ud := p.get("UserData"); ud != "" {
		b, e := base64.StdEncoding.DecodeString(ud)
		if e != nil {
			return nil, nil, invalid("Invalid BASE64 encoding of user data.")
		}
		if len(b) > maxUserData {
			return nil, nil, invalid("User data is limited to %d bytes; this is %d.", maxUserData, len(b))
		}
		in.UserData = b
	}
	if in.SecurityGroups, err = p.strs("SecurityGroupId"); err != nil {
		return nil, nil, err
	}
	if in.Tags, err = launchTags(p); err != nil {
		return nil, nil, err
	}
	form := url.Values(p).Encode()

	s.mu.Lock()
	defer s.mu.Unlock()
	if prev, ok := s.tokens[in.ClientToken]; ok && in.ClientToken != "" {
		if prev.form != form {
			return nil, nil, errf(http.StatusBadRequest, "IdempotentParameterMismatch", "ClientToken %q was used with other parameters", in.ClientToken)
		}
		return &runInstancesResponse{xmlReservation: reservationsOf(s.reservations[prev.reservation])[0]}, nil, nil
	}
	next := s.next
	ips, err := s.allocate(hi)
	if err != nil {
		return nil, nil, err
	}
	if p.dryRun() {
		s.next = next
		return nil, nil, errDryRun
	}
	res := s.newID("r")
	var launched []Instance
	for i, ip := range ips {
		n := &instance{Instance: in, reservation: res, index: i}
		n.ID, n.PrivateIP = s.newID("i"), ip
		n.Instance = n.export() // no sharing of Tags, SecurityGroups, UserData
		s.store(n)
		launched = append(launched, n.export())
	}
	if in.ClientToken != "" {
		s.tokens[in.ClientToken] = launch{form, res}
	}
	return &runInstancesResponse{xmlReservation: reservationsOf(s.reservations[res])[0]}, launched, nil
}

// launchTags validates TagSpecification.N and returns the instance's tags.
func launchTags(p params) (map[string]string, *apiError) {
	specs, err := p.indices("TagSpecification")
	if err != nil {
		return nil, err
	}
	var out map[string]string
	done := make(map[string]bool)
	for _, k := range specs {
		rt := p.get(k + ".ResourceType")
		switch {
		case rt == "":
			return nil, missing(k + ".ResourceType")
		case !launchTagTypes[rt]:
			return nil, invalid("'%s' is not a valid taggable resource type for this operation.", rt)
		case done[rt]:
			return nil, invalid("TagSpecification names resource type %s more than once", rt)
		}
		done[rt] = true
		tags, err := p.tags(k + ".Tag")
		if err != nil {
			return nil, err
		}
		if len(tags) == 0 {
			return nil, invalid("%s has no tags", k)
		}
		if rt == "instance" {
			out = tags
		}
	}
	return out, nil
}

type describeInstancesResponse struct {
	header
	Reservations []xmlReservation `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

type filter struct {
	name   string
	values []string
}

func (f filter) match(in *instance, state string) bool {
	switch {
	case f.name == "instance-state-name":
		return slices.Contains(f.values, state)
	case f.name == "instance-id":
		return slices.Contains(f.values, in.ID)
	case f.name == "tag-key":
		return slices.ContainsFunc(f.values, func(k string) bool { _, ok := in.Tags[k]; return ok })
	default: // tag:KEY
		v, ok := in.Tags[strings.TrimPrefix(f.name, "tag:")]
		return ok && slices.Contains(f.values, v)
	}
}

// shown is the state a describe reports for in now.
func (in *instance) shown() string {
	switch {
	case in.State == "pending":
		return "running"
	case in.State == "shutting-down" && in.seen:
		return "terminated"
	}
	return in.State
}

func (s *Server) describeInstances(p params) (answer, *apiError) {
	ids, err := p.strs("InstanceId")
	if err != nil {
		return nil, err
	}
	keys, err := p.indices("Filter")
	if err != nil {
		return nil, err
	}
	var filters []filter
	for _, k := range keys {
		f := filter{name: p.get(k + ".Name")}
		if f.values, err = p.strs(k + ".Value"); err != nil {
			return nil, err
		}
		switch {
		case f.name == "":
			return nil, missing(k + ".Name")
		case f.name != "instance-state-name" && f.name != "instance-id" && f.name != "tag-key" &&
			(!strings.HasPrefix(f.name, "tag:") || f.name == "tag:"):
			return nil, invalid("The filter '%s' is invalid (ec2fake knows tag:KEY, tag-key, instance-state-name, instance-id)", f.name)
		case len(f.values) == 0:
			return nil, invalid("The filter '%s' has no values", f.name)
		}
		filters = append(filters, f)
	}
	limit := 0
	if p.has("MaxResults") {
		if limit, err = p.int("MaxResults"); err != nil {
			return nil, err
		}
		if len(ids) > 0 {
			return nil, errf(http.StatusBadRequest, "InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults")
		}
		if limit < 5 || limit > 1000 {
			return nil, invalid("Value ( %d ) for parameter maxResults is invalid. Expecting a value between 5 and 1000.", limit)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	start := 0
	if tok := p.get("NextToken"); tok != "" {
		n, e := strconv.Atoi(tok)
		if e != nil || n < 1 || n > len(s.instances) {
			return nil, invalid("Invalid NextToken %q", tok)
		}
		start = n
	}
	for _, id := range ids {
		if _, ok := s.byID[id]; !ok {
			return nil, notFound(id)
		}
	}
	out := &describeInstancesResponse{}
	var page []*instance
	for i := start; i < len(s.instances); i++ {
		in := s.instances[i]
		state := in.shown()
		if len(ids) > 0 && !slices.Contains(ids, in.ID) ||
			slices.ContainsFunc(filters, func(f filter) bool { return !f.match(in, state) }) {
			continue
		}
		if limit > 0 && len(page) == limit {
			out.NextToken = strconv.Itoa(i)
			break
		}
		page = append(page, in)
	}
	for _, in := range page {
		in.State = in.shown()
		in.seen = in.State == "shutting-down"
	}
	out.Reservations = reservationsOf(page)
	return out, nil
}

type xmlChange struct {
	InstanceID string   `xml:"instanceId"`
	Current    xmlState `xml:"currentState"`
	Previous   xmlState `xml:"previousState"`
}

type terminateInstancesResponse struct {
	header
	Changes []xmlChange `xml:"instancesSet>item"`
}

func (s *Server) terminateInstances(p params) (answer, *apiError) {
	ids, err := p.strs("InstanceId")
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, missing("InstanceId")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if _, ok := s.byID[id]; !ok {
			return nil, notFound(id)
		}
	}
	if p.dryRun() {
		return nil, errDryRun
	}
	out := &terminateInstancesResponse{}
	done := make(map[string]bool)
	for _, id := range ids {
		if done[id] {
			continue
		}
		done[id] = true
		in := s.byID[id]
		prev := in.State
		if prev != "shutting-down" && prev != "terminated" {
			in.State, in.seen = "shutting-down", false
		}
		out.Changes = append(out.Changes, xmlChange{id, stateOf(in.State), stateOf(prev)})
	}
	return out, nil
}

type createTagsResponse struct {
	header
	Return bool `xml:"return"`
}

func (s *Server) createTags(p params) (answer, *apiError) {
	ids, err := p.strs("ResourceId")
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, missing("ResourceId")
	}
	tags, err := p.tags("Tag")
	if err != nil {
		return nil, err
	}
	if len(tags) == 0 {
		return nil, missing("Tag")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		_, ok := s.byID[id]
		switch {
		case !ok && strings.HasPrefix(id, "i-"):
			return nil, notFound(id)
		case !ok:
			return nil, errf(http.StatusBadRequest, "InvalidID", "The ID '%s' is not valid (ec2fake tags instances only)", id)
		}
	}
	if p.dryRun() {
		return nil, errDryRun
	}
	for _, id := range ids {
		in := s.byID[id]
		if in.Tags == nil {
			in.Tags = make(map[string]string)
		}
		maps.Copy(in.Tags, tags)
	}
	return &createTagsResponse{Return: true}, nil
}
