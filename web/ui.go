package web

// The manager UI (DESIGN §10), served by every replica under /ui: a
// dashboard whose charts and tables app.js refreshes from /ui/api/dashboard,
// and forms that change the pool. Writes go through Cluster.Apply, which has
// the leader commit them, except the resizes, which need the leader's Pool
// and are forwarded to the leader whole (ForwardToLeader), so the UI works
// the same on a follower. Every form is validated in full before anything
// is applied: a bad value gets a 4xx page that says what is wrong, and
// nothing changes.

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
)

// assets holds the UI's templates and static files. static/chart.umd.min.js
// is Chart.js v4.6.1 from npm (`npm pack chart.js@4`, package/dist), MIT
// licensed; its license is static/chart.js.LICENSE.md.
//
//go:embed templates/*.html static/*
var assets embed.FS

const (
	historyMinutes = 30              // the charts' span, at 1-minute granularity
	statsTimeout   = time.Second     // how long the pool table waits for a node's /stats
	readWait       = 2 * time.Second // how long a page waits for this replica to catch up on a write
	dataTimeout    = 3 * time.Second // bounds the dashboard data request
	maxFormBody    = 64 << 10        // bytes of a form body
	pollInterval   = 5 * time.Second // app.js refresh period, shown on the page
)

// doneNotices are the notices shown after a successful form, by the redirect's ?done=.
var doneNotices = map[string]string{
	"config":  "Cache configuration saved: every node applies it.",
	"scaling": "Scaling policy saved.",
	"grow":    "The pool grew by one node.",
	"shrink":  "The pool shrank by one node.",
	"clear":   "Every node's cache was cleared.",
	"delete":  "All application data was deleted: images, keys and cached copies.",
}

func parsePages() map[string]*template.Template {
	funcs := template.FuncMap{
		"lower": strings.ToLower,
		"num":   func(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) },
	}
	pages := map[string]*template.Template{}
	for _, p := range []string{"login", "dashboard", "confirm_delete", "problem"} {
		pages[p] = template.Must(template.New(p).Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/"+p+".html"))
	}
	return pages
}

// uiRoutes mounts the UI on r:
//
//	GET  /ui                     dashboard (charts, pool, regions, decisions, raft, forms)
//	GET  /ui/api/dashboard       the dashboard's data as JSON (app.js polls it)
//	GET  /ui/login, POST         log in with the admin token
//	POST /ui/logout
//	POST /ui/config              capacity_mb, policy
//	POST /ui/scaling             mode, max_miss, min_miss, expand_ratio, shrink_ratio
//	POST /ui/pool/grow, /shrink  manual mode only; served by the leader
//	POST /ui/clear               clear every node's cache
//	GET  /ui/delete-all, POST    confirmation page, then delete all data (confirm=yes)
//	GET  /ui/static/...          CSS, JavaScript, Chart.js
//
// Every POST needs the session's CSRF token in the form field csrf.
func (a *API) uiRoutes(r chi.Router) {
	static, err := fs.Sub(assets, "static")
	if err != nil {
		panic(err) // the embedded tree has static/
	}
	files := http.StripPrefix("/ui/static/", http.FileServerFS(static))
	r.Get("/ui/static/*", func(w http.ResponseWriter, r *http.Request) {
		if !utf8.ValidString(r.URL.Path) {
			// No file has such a name; the file server would answer 500
			// (the embedded tree refuses the name as invalid).
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		files.ServeHTTP(w, r)
	})
	r.Get("/ui/", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui", http.StatusMovedPermanently) })
	r.Group(func(r chi.Router) {
		r.Use(securityHeaders)
		r.Get("/ui/login", a.uiLoginPage)
		r.With(a.requireCSRF).Post("/ui/login", a.uiLogin)
		r.Group(func(r chi.Router) {
			r.Use(a.requireSession)
			r.Get("/ui", a.uiDashboard)
			r.Get("/ui/api/dashboard", a.uiDashboardData)
			r.Get("/ui/delete-all", a.uiConfirmDelete)
			r.Group(func(r chi.Router) {
				r.Use(a.requireCSRF)
				r.Post("/ui/logout", a.uiLogout)
				// These forms commit fsm.Configure patches, checked again
				// inside Apply against the current state: a follower's
				// stale copy never overwrites a newer change.
				r.Post("/ui/config", a.uiConfig)
				r.Post("/ui/scaling", a.uiScaling)
				r.Post("/ui/pool/grow", a.uiResize(+1))
				r.Post("/ui/pool/shrink", a.uiResize(-1))
				r.Post("/ui/clear", a.uiClear)
				r.Post("/ui/delete-all", a.uiDeleteAll)
			})
		})
	})
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// requireSession lets through requests with a logged-in session and sends
// others to the login page (401 for the JSON endpoint). With no admin token
// the UI is open: a browser without a session gets one here.
func (a *API) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := a.readSession(r)
		switch {
		case ok && (s.loggedIn || a.cfg.AdminToken == ""):
		case a.cfg.AdminToken == "":
			s = newSession(true, time.Now())
			a.setSession(w, r, s)
		case strings.HasPrefix(r.URL.Path, "/ui/api/"):
			jsonhttp.Error(w, http.StatusUnauthorized, "log in at /ui/login")
			return
		default:
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
	})
}

// requireCSRF refuses, with 403, a POST whose form lacks the session's CSRF
// token. It reads the (bounded) form body into r.PostForm and puts the body
// back, so that a request forwarded to the leader carries it too.
func (a *API) requireCSRF(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := r.Context().Value(sessionKey{}).(session)
		if !ok {
			s, ok = a.readSession(r) // the login form: an anonymous session
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxFormBody+1))
		if err != nil || len(body) > maxFormBody {
			a.problem(w, r, http.StatusRequestEntityTooLarge, "The form could not be read", "The form was too large or broken off. Nothing was changed.")
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, err := url.ParseQuery(string(body))
		if err != nil || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
			form = url.Values{}
		}
		if !ok || !a.validCSRF(s, form.Get(csrfField)) {
			a.log.Warn("form refused: missing or wrong CSRF token", "path", r.URL.Path, "remote", r.RemoteAddr)
			a.problem(w, r, http.StatusForbidden, "This form cannot be accepted",
				"The form did not carry this session's security token (CSRF), so it may not have come from this page, or it was opened before you logged in again. Nothing was changed. Go back to the dashboard and submit the form again.")
			return
		}
		r.PostForm = form
		r.Form = form
		next.ServeHTTP(w, r)
	})
}

// pageData is what every page template gets.
type pageData struct {
	Title      string
	Replica    cluster.Status
	CSRF       string
	ShowLogout bool
	State      fsm.State
	Nodes      int
	MinNodes   int
	MaxNodes   int
	Auto       bool
	Notice     string
	Done       string   // which write the notice is about (config, grow, ...)
	Problem    string   // a headline: what was refused
	Problems   []string // each thing wrong
	Poll       time.Duration
	Heading    string // problem page
	Message    string // problem page
}

func (a *API) page(r *http.Request, title string) pageData {
	st := a.cluster.State()
	s := sessionFrom(r.Context())
	if s.id == "" {
		s, _ = a.readSession(r)
	}
	d := pageData{
		Title: title, Replica: a.cluster.Status(), State: st, Nodes: len(st.Members),
		MinNodes: fsm.MinNodes, MaxNodes: fsm.MaxNodes, Auto: st.Scaling.Mode == fsm.ModeAuto,
		ShowLogout: a.cfg.AdminToken != "" && s.loggedIn, Poll: pollInterval,
	}
	if s.id != "" {
		d.CSRF = a.csrfToken(s)
	}
	return d
}

func (a *API) render(w http.ResponseWriter, code int, name string, d pageData) {
	var buf bytes.Buffer
	if err := a.pages[name].ExecuteTemplate(&buf, "layout", d); err != nil {
		a.log.Error("rendering page", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

// problem answers with a page that says what went wrong.
func (a *API) problem(w http.ResponseWriter, r *http.Request, code int, heading, message string) {
	d := a.page(r, heading)
	d.Heading, d.Message = heading, message
	a.render(w, code, "problem", d)
}

// refuse answers a form with bad values: the dashboard, with the problems on top.
func (a *API) refuse(w http.ResponseWriter, r *http.Request, code int, headline string, problems ...string) {
	d := a.page(r, "Dashboard")
	d.Problem, d.Problems = headline, problems
	a.render(w, code, "dashboard", d)
}

func (a *API) uiLoginPage(w http.ResponseWriter, r *http.Request) {
	s, ok := a.readSession(r)
	if a.cfg.AdminToken == "" || (ok && s.loggedIn) {
		http.Redirect(w, r, "/ui", http.StatusSeeOther)
		return
	}
	if !ok {
		s = newSession(false, time.Now())
		a.setSession(w, r, s)
	}
	d := a.page(r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)), "Log in")
	a.render(w, http.StatusOK, "login", d)
}

func (a *API) uiLogin(w http.ResponseWriter, r *http.Request) {
	if a.cfg.AdminToken == "" {
		http.Redirect(w, r, "/ui", http.StatusSeeOther)
		return
	}
	if !auth.TokenEqual(r.PostForm.Get("token"), a.cfg.AdminToken) {
		a.log.Warn("UI login refused: wrong admin token", "remote", r.RemoteAddr)
		d := a.page(r, "Log in")
		d.Problem = "That is not the admin token. Try again."
		a.render(w, http.StatusUnauthorized, "login", d)
		return
	}
	a.setSession(w, r, newSession(true, time.Now()))
	http.Redirect(w, r, "/ui", http.StatusSeeOther)
}

func (a *API) uiLogout(w http.ResponseWriter, r *http.Request) {
	a.clearSession(w, r)
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

// uiDashboard renders the dashboard. After a write it is reached with
// ?done=<what>&index=<raft index>, and waits (briefly) until this replica
// has applied that index, so the page shows the change.
func (a *API) uiDashboard(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if idx, err := strconv.ParseUint(q.Get("index"), 10, 64); err == nil && idx > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), readWait)
		a.cluster.Wait(ctx, idx-1)
		cancel()
	}
	d := a.page(r, "Dashboard")
	if n, ok := doneNotices[q.Get("done")]; ok {
		d.Notice, d.Done = n, q.Get("done")
	}
	a.render(w, http.StatusOK, "dashboard", d)
}

func (a *API) uiConfirmDelete(w http.ResponseWriter, r *http.Request) {
	a.render(w, http.StatusOK, "confirm_delete", a.page(r, "Delete all data"))
}

// written redirects to the dashboard after a committed write.
func written(w http.ResponseWriter, r *http.Request, what string, res fsm.Result) {
	http.Redirect(w, r, fmt.Sprintf("/ui?done=%s&index=%d", what, res.Index), http.StatusSeeOther)
}

// uiApply commits cmd and redirects to the dashboard, or shows why not.
func (a *API) uiApply(w http.ResponseWriter, r *http.Request, what, refused string, cmd fsm.Command) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	res, err := a.cluster.Apply(ctx, cmd)
	if err != nil {
		a.refuse(w, r, statusOfApply(err), refused, err.Error())
		return
	}
	written(w, r, what, res)
}

// formInt parses a required whole-number field.
func formInt(f url.Values, name, label string) (int, string) {
	v := strings.TrimSpace(f.Get(name))
	if v == "" {
		return 0, label + " is required."
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Sprintf("%s must be a whole number; %q is not.", label, v)
	}
	return n, ""
}

// formFloat parses an optional number field; ok is false when it is blank.
func formFloat(f url.Values, name, label string) (x float64, ok bool, problem string) {
	v := strings.TrimSpace(f.Get(name))
	if v == "" {
		return 0, false, ""
	}
	x, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
		return 0, false, fmt.Sprintf("%s must be a number; %q is not.", label, v)
	}
	return x, true, ""
}

// uiConfig sets the cache capacity and policy. The form handlers parse the
// fields here and leave every bound to fsm.Configure.Validate, whose refused
// fields formProblems words for the page; Apply checks the patch again
// against the state it meets.
func (a *API) uiConfig(w http.ResponseWriter, r *http.Request) {
	const refused = "The cache configuration was not changed."
	var patch fsm.Configure
	var problems []string
	if capacity, p := formInt(r.PostForm, "capacity_mb", "Capacity"); p != "" {
		problems = append(problems, p)
	} else {
		patch.CapacityMB = &capacity
	}
	policy := r.PostForm.Get("policy")
	patch.Policy = &policy
	a.uiConfigure(w, r, "config", refused, patch, problems)
}

// uiScaling sets the mode and the automatic mode's parameters; a blank
// parameter keeps its current value.
func (a *API) uiScaling(w http.ResponseWriter, r *http.Request) {
	const refused = "The scaling policy was not changed."
	var patch fsm.Configure
	var problems []string
	mode := r.PostForm.Get("mode")
	patch.Mode = &mode
	for _, f := range []struct {
		name, label string
		set         **float64
	}{
		{"max_miss", "Max miss rate", &patch.MaxMissRate},
		{"min_miss", "Min miss rate", &patch.MinMissRate},
		{"expand_ratio", "Expand ratio", &patch.ExpandRatio},
		{"shrink_ratio", "Shrink ratio", &patch.ShrinkRatio},
	} {
		switch x, set, p := formFloat(r.PostForm, f.name, f.label); {
		case p != "":
			problems = append(problems, p)
		case set:
			*f.set = &x
		}
	}
	a.uiConfigure(w, r, "scaling", refused, patch, problems)
}

// uiConfigure checks patch against this replica's state, for clear messages
// beside the form's own problems, and commits it if there are none.
func (a *API) uiConfigure(w http.ResponseWriter, r *http.Request, what, refused string, patch fsm.Configure, problems []string) {
	if err := patch.Validate(a.cluster.State()); err != nil {
		var fes fsm.FieldErrors
		if !errors.As(err, &fes) {
			problems = append(problems, err.Error())
		}
		for _, fe := range fes {
			problems = append(problems, formProblem(fe))
		}
	}
	if len(problems) > 0 {
		a.refuse(w, r, http.StatusBadRequest, refused, problems...)
		return
	}
	a.uiApply(w, r, what, refused, patch)
}

// formLabels names the forms' fields by their JSON names, which the FSM's
// validation reports; unit follows a value that has one.
var formLabels = map[string]struct{ label, unit string }{
	"capacity_mb":   {"Capacity", "MB"},
	"policy":        {"Policy", ""},
	"mode":          {"Mode", ""},
	"max_miss_rate": {"Max miss rate", ""},
	"min_miss_rate": {"Min miss rate", ""},
	"expand_ratio":  {"Expand ratio", ""},
	"shrink_ratio":  {"Shrink ratio", ""},
}

// formProblem words a field the FSM refused for the page, such as
// "Capacity 0 MB is outside 1..1024 MB."; the bounds are the FSM's.
func formProblem(e *fsm.FieldError) string {
	l, ok := formLabels[e.Field]
	if !ok {
		l.label = e.Field
	}
	switch {
	case e.OneOf != nil:
		return fmt.Sprintf("%s must be %s; %q is neither.", l.label, strings.Join(e.OneOf, " or "), e.Value)
	case e.Below != "":
		below := formLabels[e.Below].label
		if below == "" {
			below = e.Below
		}
		return fmt.Sprintf("%s %v must be below %s %v.", l.label, e.Value, strings.ToLower(below), e.Limit)
	case l.unit != "" && !e.MinOpen && !e.MaxOpen:
		return fmt.Sprintf("%s %v %s is outside %v..%v %s.", l.label, e.Value, l.unit, e.Min, e.Max, l.unit)
	}
	var want string
	switch {
	case e.MinOpen && e.MaxOpen:
		want = "strictly between %v and %v"
	case e.MinOpen:
		want = "above %v and at most %v"
	case e.MaxOpen:
		want = "at least %v and below %v"
	default:
		want = "between %v and %v"
	}
	return fmt.Sprintf("%s %v must be "+want+".", l.label, e.Value, e.Min, e.Max)
}

// resizeProblem says why the pool in st cannot change by delta, or "".
func resizeProblem(st fsm.State, delta int) string {
	n := len(st.Members)
	switch {
	case st.Scaling.Mode != fsm.ModeManual:
		return fmt.Sprintf("The pool is in %s mode, where the auto-scaler sizes it. Switch to manual mode to grow or shrink it by hand.", st.Scaling.Mode)
	case delta > 0 && n >= fsm.MaxNodes:
		return fmt.Sprintf("The pool already has %d nodes, the most it may have.", n)
	case delta < 0 && n <= fsm.MinNodes:
		return fmt.Sprintf("The pool has %d node, the fewest it may have.", n)
	}
	return ""
}

// uiResize grows or shrinks the pool by one node. It checks the request on
// this replica, then has the leader (where the Pool runs) check it against
// the current state and resize.
func (a *API) uiResize(delta int) http.HandlerFunc {
	what, verb := "grow", "grow"
	if delta < 0 {
		what, verb = "shrink", "shrink"
	}
	refused := fmt.Sprintf("The pool did not %s.", verb)
	onLeader := a.cluster.ForwardToLeader(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := a.cluster.State()
		if p := resizeProblem(st, delta); p != "" {
			a.refuse(w, r, http.StatusConflict, refused, p)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
		defer cancel()
		res, err := a.pool.Resize(ctx, len(st.Members)+delta)
		if err != nil {
			a.refuse(w, r, statusOfApply(err), refused, err.Error())
			return
		}
		written(w, r, what, res)
	}))
	return func(w http.ResponseWriter, r *http.Request) {
		if p := resizeProblem(a.cluster.State(), delta); p != "" {
			a.refuse(w, r, http.StatusConflict, refused, p)
			return
		}
		onLeader.ServeHTTP(w, r)
	}
}

func (a *API) uiClear(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	res, err := a.clearCaches(ctx)
	if err != nil {
		a.refuse(w, r, statusOfCarryOut(err), "The caches were not confirmed cleared.", err.Error())
		return
	}
	written(w, r, "clear", res)
}

func (a *API) uiDeleteAll(w http.ResponseWriter, r *http.Request) {
	if r.PostForm.Get("confirm") != "yes" {
		a.refuse(w, r, http.StatusBadRequest, "Nothing was deleted.",
			"Deleting all data needs the confirmation step: use the “Delete all data…” button and confirm on the page it opens.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	res, _, err := a.deleteAll(ctx)
	if err != nil {
		headline := "Nothing was deleted."
		if errors.Is(err, errNotCarriedOut) {
			headline = "The deletion is committed but not yet confirmed done."
		}
		a.refuse(w, r, statusOfCarryOut(err), headline, err.Error())
		return
	}
	written(w, r, "delete", res)
}

// The dashboard's JSON (GET /ui/api/dashboard).

// series are the charts' data, one value per minute, oldest first; null
// where there is no data (a rate in a minute without GETs, or any figure
// before the metrics begin).
type series struct {
	Times    []time.Time `json:"times"`
	Nodes    []*int      `json:"nodes"`
	MissRate []*float64  `json:"miss_rate"`
	HitRate  []*float64  `json:"hit_rate"`
	Items    []*int64    `json:"items"`
	Bytes    []*int64    `json:"bytes"`
	Requests []*uint64   `json:"requests"`
}

type poolRow struct {
	ID      string `json:"id"`
	HTTP    string `json:"http"`
	Regions []int  `json:"regions"`
	Items   *int64 `json:"items"`
	Bytes   *int64 `json:"bytes"`
	Health  string `json:"health"` // "ok" or what went wrong
	// Handoff is the node's warm handoffs in progress, e.g. "receiving 4
	// regions from n1: 120 entries, 4.8 MB so far"; empty if none.
	Handoff string `json:"handoff"`
}

type dashboard struct {
	Time         time.Time            `json:"time"`
	Replica      cluster.Status       `json:"replica"`
	Cache        fsm.CacheConfig      `json:"cache"`
	Scaling      fsm.ScalingPolicy    `json:"scaling"`
	Epoch        uint64               `json:"epoch"`
	MinNodes     int                  `json:"min_nodes"`
	MaxNodes     int                  `json:"max_nodes"`
	Series       series               `json:"series"`
	MetricsError string               `json:"metrics_error,omitempty"`
	Pool         []poolRow            `json:"pool"`
	Regions      [region.Count]string `json:"regions"`
	Decisions    []fsm.Decision       `json:"decisions"` // newest first
}

func ptr[T any](v T) *T { return &v }

func toSeries(pts []metrics.Point) series {
	s := series{Times: []time.Time{}, Nodes: []*int{}, MissRate: []*float64{}, HitRate: []*float64{},
		Items: []*int64{}, Bytes: []*int64{}, Requests: []*uint64{}}
	for _, p := range pts {
		s.Times = append(s.Times, p.Time)
		if p.Nodes == 0 && p.Requests == 0 && p.Items == 0 {
			// Before the metrics begin (a pool always has a node).
			s.Nodes, s.Items, s.Bytes, s.Requests = append(s.Nodes, nil), append(s.Items, nil), append(s.Bytes, nil), append(s.Requests, nil)
			s.MissRate, s.HitRate = append(s.MissRate, nil), append(s.HitRate, nil)
			continue
		}
		s.Nodes = append(s.Nodes, ptr(p.Nodes))
		s.Items = append(s.Items, ptr(p.Items))
		s.Bytes = append(s.Bytes, ptr(p.Bytes))
		s.Requests = append(s.Requests, ptr(p.Requests))
		s.MissRate = append(s.MissRate, p.MissRate)
		s.HitRate = append(s.HitRate, p.HitRate)
	}
	return s
}

func (a *API) uiDashboardData(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), dataTimeout)
	defer cancel()
	now := time.Now()
	st := a.cluster.State()
	d := dashboard{
		Time: now, Replica: a.cluster.Status(), Cache: st.Cache, Scaling: st.Scaling, Epoch: st.Epoch,
		MinNodes: fsm.MinNodes, MaxNodes: fsm.MaxNodes, Regions: st.Regions,
		Decisions: make([]fsm.Decision, 0, len(st.Decisions)),
	}
	for i := len(st.Decisions) - 1; i >= 0; i-- {
		d.Decisions = append(d.Decisions, st.Decisions[i])
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if a.metrics == nil {
			d.MetricsError = "no metrics backend is configured on this replica"
			d.Series = toSeries(nil)
			return
		}
		pts, err := a.metrics.History(ctx, now, historyMinutes)
		if err != nil {
			d.MetricsError = err.Error()
		}
		d.Series = toSeries(pts)
	})
	wg.Go(func() { d.Pool = a.poolRows(ctx, st) })
	wg.Wait()
	w.Header().Set("Cache-Control", "no-store")
	jsonhttp.Write(w, http.StatusOK, d)
}

// poolRows asks every member for its counters, concurrently, each within
// statsTimeout.
func (a *API) poolRows(ctx context.Context, st fsm.State) []poolRow {
	rows := make([]poolRow, len(st.Members))
	var wg sync.WaitGroup
	for i, m := range st.Members {
		rows[i] = poolRow{ID: m.ID, HTTP: m.HTTP, Regions: st.Regions.Owned(m.ID)}
		if rows[i].Regions == nil {
			rows[i].Regions = []int{}
		}
		wg.Go(func() {
			ns, err := a.nodeStats(ctx, m)
			if err != nil {
				rows[i].Health = err.Error()
				return
			}
			c := ns.Counters
			rows[i].Items, rows[i].Bytes, rows[i].Health = ptr(c.Items), ptr(c.Bytes), "ok"
			rows[i].Handoff = handoffText(ns.Handoff)
		})
	}
	wg.Wait()
	return rows
}

// handoffText describes a node's handoffs in progress for the pool table.
func handoffText(h node.HandoffStatus) string {
	var parts []string
	if n := len(h.Receiving); n > 0 {
		from := map[string]bool{}
		var entries, size uint64
		for _, r := range h.Receiving {
			from[r.Peer] = true
			entries += r.Entries
			size += r.Bytes
		}
		peers := slices.Sorted(maps.Keys(from))
		parts = append(parts, fmt.Sprintf("receiving %d region%s from %s: %d entries, %s so far", n, plural(n), strings.Join(peers, ", "), entries, humanBytes(size)))
	}
	if n := len(h.Giving); n > 0 {
		to := map[string]bool{}
		for _, r := range h.Giving {
			to[r.Peer] = true
		}
		parts = append(parts, fmt.Sprintf("keeping %d region%s for %s", n, plural(n), strings.Join(slices.Sorted(maps.Keys(to)), ", ")))
	}
	if n := len(h.Waiting); n > 0 {
		parts = append(parts, fmt.Sprintf("%d region%s not served until the previous owner holds the map", n, plural(n)))
	}
	return strings.Join(parts, "; ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// humanBytes formats n bytes as B, KB or MB.
func humanBytes(n uint64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func (a *API) nodeStats(ctx context.Context, m fsm.Member) (node.Stats, error) {
	// The table needs only the counters and handoffs: ask for no samples.
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	st, err := a.nodes.Stats(ctx, m.HTTP, time.Now())
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return node.Stats{}, fmt.Errorf("no answer within %v", statsTimeout)
		}
		return node.Stats{}, err
	}
	return st, nil
}
