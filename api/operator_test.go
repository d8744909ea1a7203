package api

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/connectors/bureau"
	"github.com/loanflow/loanflow/connectors/postgres"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
)

// serveRegistry serves reg as a /metrics endpoint for the test.
func serveRegistry(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return srv.URL + "/metrics"
}

// TestOperatorPageCheckpointsAndCDCLag: the operator page reads the engine
// workers' metrics, the bureau client's and a running CDC reader's from
// their /metrics endpoints and shows a card per job (checkpoint age and
// duration, backpressure, checkpoint failures, bureau breaker) and
// replication lag; an unreachable endpoint is reported, not fatal. The
// expected figures are the ones the test set on the real metric types.
func TestOperatorPageCheckpointsAndCDCLag(t *testing.T) {
	engineReg := prometheus.NewRegistry()
	em := pipeline.NewMetrics(engineReg)
	lastCkpt := time.Now().Add(-42 * time.Second)
	em.LastCheckpoint.WithLabelValues("decisions", "w-1").Set(float64(lastCkpt.UnixNano()) / 1e9)
	em.LastCheckpoint.WithLabelValues("portfolio", "w-2").Set(float64(time.Now().UnixNano()) / 1e9)
	em.CheckpointDuration.WithLabelValues("decisions", "w-1").Observe(0.2)
	em.CheckpointDuration.WithLabelValues("decisions", "w-1").Observe(0.4)
	em.QueueFill.WithLabelValues("decisions", "0", "3").Set(0.95)
	em.QueueFill.WithLabelValues("portfolio", "0", "0").Set(0.1)
	// A bureau client whose bureau is down: one unavailable answer opens
	// its breaker (the real client's metrics, served beside the job's).
	bc, err := bureau.NewClient(bureau.ClientConfig{URL: "http://127.0.0.1:1", BreakerFailures: 1, BreakerOpen: time.Hour, Registerer: engineReg})
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	if _, err := bc.CreditReport(context.Background(), bureau.Request{ApplicationID: "app-1", SSNIndex: []byte("0123456789abcdef"), SubscriberID: "bank-op"}); err == nil {
		t.Fatal("a call to an unreachable bureau succeeded")
	}
	if bc.BreakerState() != "open" {
		t.Fatalf("breaker %s after a failure, want open", bc.BreakerState())
	}
	portfolioReg := prometheus.NewRegistry()
	pm := pipeline.NewMetrics(portfolioReg)
	pm.LastCheckpoint.WithLabelValues("portfolio", "w-3").Set(float64(time.Now().UnixNano()) / 1e9)
	pm.CheckpointFailures.WithLabelValues("portfolio", "timeout").Add(2)
	cdcReg := prometheus.NewRegistry()
	urls := []string{serveRegistry(t, engineReg), serveRegistry(t, cdcReg), "http://127.0.0.1:1/metrics", serveRegistry(t, portfolioReg)}
	e := newEnv(t, func(c *Config) { c.OperatorMetricsURLs = urls })
	runCDC(t, e, cdcReg)

	var h Health
	waitFor(t, "CDC metrics with a recent commit", func() bool {
		h = Health{}
		e.do("GET", "/v1/admin/pipeline-health", e.admin, nil).json(t, &h)
		return len(h.CDC) == 1 && h.CDC[0].LastCommitAgeSeconds >= 0 && h.CDC[0].LastCommitAgeSeconds < 10
	})
	if len(h.Checkpoints) != 3 {
		t.Fatalf("checkpoints: %+v", h.Checkpoints)
	}
	if c := h.Checkpoints[0]; c.Job != "decisions" || c.Worker != "w-1" || c.AgeSeconds < 41 || c.AgeSeconds > 60 {
		t.Fatalf("decisions checkpoint: %+v", c)
	}
	if c := h.CDC[0]; c.Reader != "op_cdc" || c.SnapshotProgress != 1 || c.LagBytes < 0 || c.Source != urls[1] {
		t.Fatalf("cdc: %+v", c)
	}
	if h.Scraped[2].Error == "" {
		t.Fatalf("unreachable endpoint not reported: %+v", h.Scraped[2])
	}
	checkJobCards(t, h.Jobs)

	// The page is a shell that renders the health stream: the stream's
	// first event is the same report.
	page := e.do("GET", "/operator", e.admin, nil)
	if page.status != http.StatusOK || !strings.Contains(string(page.body), `id="jobs"`) || !strings.HasPrefix(page.header.Get("Content-Type"), "text/html") {
		t.Fatalf("operator page: %d %s\n%s", page.status, page.header.Get("Content-Type"), page.body)
	}
	var streamed Health
	firstEvent(t, e, "/operator/events", e.admin, "health", &streamed)
	checkJobCards(t, streamed.Jobs)
}

// checkJobCards checks the cards TestOperatorPageCheckpointsAndCDCLag's
// metrics make.
func checkJobCards(t *testing.T, jobs []JobHealth) {
	t.Helper()
	if len(jobs) != 2 || jobs[0].Job != "decisions" || jobs[1].Job != "portfolio" {
		t.Fatalf("job cards: %+v", jobs)
	}
	d, p := jobs[0], jobs[1]
	if d.CheckpointAgeSeconds < 41 || d.CheckpointAgeSeconds > 60 || math.Abs(d.CheckpointMeanSeconds-0.3) > 1e-9 || d.Backpressure != 0.95 {
		t.Errorf("decisions card figures: %+v", d)
	}
	if d.Bureau == nil || d.Bureau.Breaker != "open" || d.Bureau.Calls[bureau.ResultUnavailable] != 1 {
		t.Errorf("decisions card bureau: %+v", d.Bureau)
	}
	if d.Status != "fail" || !containsPrefix(d.Problems, "bureau circuit breaker open") || !containsPrefix(d.Problems, "backpressure") {
		t.Errorf("decisions card status %s %q, want fail for the open breaker and the backpressure", d.Status, d.Problems)
	}
	// Two endpoints serve portfolio workers: their figures add up.
	if p.Bureau != nil || p.CheckpointFailures != 2 || p.CheckpointAgeSeconds > 20 || p.Backpressure != 0.1 || p.Lag != -1 || p.State != "unknown" {
		t.Errorf("portfolio card: %+v", p)
	}
	if p.Status != "warn" || len(p.Problems) != 1 || p.Problems[0] != "2 checkpoints failed" {
		t.Errorf("portfolio card status %s %q, want warn for the failed checkpoints only", p.Status, p.Problems)
	}
}

func containsPrefix(xs []string, prefix string) bool {
	for _, x := range xs {
		if strings.HasPrefix(x, prefix) {
			return true
		}
	}
	return false
}

// firstEvent reads an SSE stream until its first event named name and
// decodes its data into v.
func firstEvent(t *testing.T, e *env, path, tok, name string, v any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%s: %s %s", path, resp.Status, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if ev, ok := strings.CutPrefix(line, "event: "); ok {
			event = ev
		} else if data, ok := strings.CutPrefix(line, "data: "); ok && event == name {
			if err := json.Unmarshal([]byte(data), v); err != nil {
				t.Fatalf("%s event: %v", name, err)
			}
			return
		}
	}
	t.Fatalf("%s ended without a %s event: %v", path, name, sc.Err())
}

// runCDC runs a CDC reader of the API's loans table on the test database,
// exporting its metrics to reg, until the test ends.
func runCDC(t *testing.T, e *env, reg *prometheus.Registry) {
	t.Helper()
	cfg := postgres.Config{Name: "op_cdc", DatabaseURL: e.cfg.DatabaseURL, Brokers: e.brokers, SchemaRegistryURL: e.registry,
		Tables: []postgres.TableConfig{{Table: "public.loans"}}, EnsureReplicaIdentityFull: true,
		TopicPrefix: testenv.Name(t, "cdc"), PositionsTopic: testenv.Name(t, "cdc_pos"), TopicPartitions: 1,
		HeartbeatInterval: 500 * time.Millisecond, StatusInterval: 200 * time.Millisecond, Registerer: reg, Logger: e.cfg.Logger}
	r, err := postgres.NewReader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("cdc reader: %v", err)
		}
	})
}

// TestOperatorJobGroups: a job's consumer group ("loanflow-NAME") gets a
// card whose lag is net of transaction markers and aborted records (the
// committed records the test wrote; the offset difference, which counts
// the markers, is the negative control), and a stopped job's card says
// so; a group that is no job's is counted, not shown.
func TestOperatorJobGroups(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	topic := testenv.Name(t, "in")
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	committed := testenv.ProduceTxns(t, e.brokers, topic, 4, 5, 2)
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	end, _ := ends.Lookup(topic, 0)
	if end.Offset == int64(committed) {
		t.Fatalf("negative control: the offset difference %d equals the committed records: no markers", end.Offset)
	}
	job := testenv.Name(t, "job")
	tool := testenv.Name(t, "tool")
	for _, g := range []string{"loanflow-" + job, tool} {
		var o kadm.Offsets
		o.AddOffset(topic, 0, 0, -1)
		if _, err := adm.CommitOffsets(ctx, g, o); err != nil {
			t.Fatal(err)
		}
	}
	var h Health
	e.do("GET", "/v1/admin/pipeline-health", e.admin, nil).json(t, &h)
	var card *JobHealth
	for i := range h.Jobs {
		if h.Jobs[i].Job == job {
			card = &h.Jobs[i]
		}
	}
	if card == nil {
		t.Fatalf("no card for job %s: %+v", job, h.Jobs)
	}
	if card.Lag != int64(committed) || !card.LagExact || card.LagError != "" {
		t.Errorf("job lag %d (exact %v, %q), want the %d committed records (offsets: %d)", card.Lag, card.LagExact, card.LagError, committed, end.Offset)
	}
	if card.Status != "fail" || !containsPrefix(card.Problems, "no worker in group") {
		t.Errorf("a job without workers: status %s %q", card.Status, card.Problems)
	}
	for _, g := range h.Groups {
		if g.Group == tool {
			t.Errorf("group %s, no job's, is listed", tool)
		}
	}
	if h.HiddenGroups < 1 {
		t.Errorf("hidden groups %d, want at least %s", h.HiddenGroups, tool)
	}
}

// TestPageSessions: the pages answer a browser with pages: sign-in without
// a session, a redirect to sign-in with a note when the session's token is
// no longer valid (its cookie cleared), a 403 page to a session of the
// wrong kind, and sign-out clears the session.
func TestPageSessions(t *testing.T) {
	e := newEnv(t)
	lender := e.lender("bank-pages")
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path, cookie string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, e.url+path, nil)
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: dashboardCookie, Value: cookie})
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	cleared := func(resp *http.Response) bool {
		for _, c := range resp.Cookies() {
			if c.Name == dashboardCookie && c.MaxAge < 0 {
				return true
			}
		}
		return false
	}
	for _, page := range []string{"/dashboard", "/operator"} {
		if r := get(page, ""); r.StatusCode != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/html") {
			t.Errorf("%s without a session: %d %s", page, r.StatusCode, r.Header.Get("Content-Type"))
		}
		r := get(page, "not-a-token")
		if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != page+"?error=expired" || !cleared(r) {
			t.Errorf("%s with an invalid session: %d to %q (cookie cleared: %v)", page, r.StatusCode, r.Header.Get("Location"), cleared(r))
		}
	}
	if r := get("/dashboard", lender); r.StatusCode != 200 {
		t.Errorf("a lender's dashboard: %d", r.StatusCode)
	}
	page := e.do("GET", "/dashboard", e.admin, nil)
	if page.status != 403 || !strings.Contains(string(page.body), `href="/operator"`) {
		t.Errorf("the dashboard for an operator: %d\n%s", page.status, page.body)
	}
	if r := get("/session", "not-a-token"); r.StatusCode != 401 {
		t.Errorf("/session with an invalid session: %d", r.StatusCode)
	}
	var s Session
	e.do("GET", "/session", lender, nil).json(t, &s)
	if s.Lender != "bank-pages" || len(s.Scopes) == 0 {
		t.Errorf("session: %+v", s)
	}
	req, _ := http.NewRequest(http.MethodPost, e.url+"/logout", strings.NewReader("next=operator"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/operator?signedout=1" || !cleared(resp) {
		t.Errorf("logout: %d to %q (cookie cleared: %v)", resp.StatusCode, resp.Header.Get("Location"), cleared(resp))
	}
}
