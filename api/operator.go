package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kadm"
	"golang.org/x/sync/singleflight"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
	"github.com/loanflow/loanflow/connectors/kafka"
)

// Health is the pipeline health shown on the operator page.
type Health struct {
	At time.Time `json:"at"`
	// Jobs has a card per job: a job's consumer group ("loanflow-NAME")
	// and its workers' metrics, merged.
	Jobs        []JobHealth        `json:"jobs"`
	Checkpoints []CheckpointHealth `json:"checkpoints"`
	CDC         []CDCHealth        `json:"cdc"`
	Topics      []TopicHealth      `json:"topics"`
	Groups      []GroupHealth      `json:"groups"`
	// HiddenGroups counts the consumer groups that are not a job's
	// (command-line consumers, tests, tools): listed only as a number.
	HiddenGroups  int            `json:"hidden_groups"`
	Scraped       []ScrapeResult `json:"scraped"`
	Notes         []string       `json:"notes,omitempty"`
	HubConsumed   int64          `json:"hub_records_consumed"`
	HubLastRecord *time.Time     `json:"hub_last_record,omitempty"`
}

// CheckpointHealth is one engine worker's last committed checkpoint, from
// loanflow_engine_last_checkpoint_timestamp_seconds{job,worker}.
type CheckpointHealth struct {
	Source         string    `json:"source"` // metrics URL
	Job            string    `json:"job"`
	Worker         string    `json:"worker"`
	LastCheckpoint time.Time `json:"last_checkpoint"`
	AgeSeconds     float64   `json:"age_seconds"`
}

// CDCHealth is one CDC reader's replication lag (loanflow_cdc_* series).
type CDCHealth struct {
	Source        string  `json:"source"` // metrics URL
	Reader        string  `json:"reader"`
	LagBytes      float64 `json:"replication_lag_bytes"`
	LagSeconds    float64 `json:"replication_lag_seconds"`
	ChangesPerSec float64 `json:"changes_per_second"`
	// LastCommitAgeSeconds is the time since the reader's last Kafka
	// commit (heartbeats commit too); -1 when the reader does not export it.
	LastCommitAgeSeconds float64 `json:"last_commit_age_seconds"`
	SnapshotProgress     float64 `json:"snapshot_progress_ratio"`
}

// TopicHealth is a topic's end offsets summed over partitions.
type TopicHealth struct {
	Topic      string `json:"topic"`
	Partitions int    `json:"partitions"`
	EndOffset  int64  `json:"end_offset_sum"`
}

// GroupHealth is a job's consumer group: its state, members and lag net
// of transaction markers (a caught-up transactional job has lag 0, not one
// per partition).
type GroupHealth struct {
	Group   string   `json:"group"`
	State   string   `json:"state"`
	Members []string `json:"members"`
	Lag     int64    `json:"lag"`
	// LagExact is false when a partition's backlog was too long to count
	// (its offset difference, an upper bound, is in Lag).
	LagExact bool   `json:"lag_exact"`
	LagError string `json:"lag_error,omitempty"`
}

// ScrapeResult is one metrics endpoint's scrape: its error, if any (its
// series go into the job, checkpoint and CDC figures, not onto the page).
type ScrapeResult struct {
	URL   string `json:"url"`
	Error string `json:"error,omitempty"`
}

func (s *Server) pipelineHealth(ctx context.Context) Health {
	h := Health{At: time.Now().UTC()}
	h.HubConsumed, _ = s.hub.stats()
	if _, last := s.hub.stats(); !last.IsZero() {
		h.HubLastRecord = &last
	}
	adm := kadm.NewClient(s.producer)
	topics := []string{s.cfg.ApplicationsTopic, s.cfg.DecisionsTopic, s.cfg.MetricsTopic, "customer_360"}
	if ends, err := adm.ListEndOffsets(ctx, topics...); err != nil {
		h.Notes = append(h.Notes, "topic offsets unavailable: "+err.Error())
	} else {
		ends.Each(func(o kadm.ListedOffset) { h.addEnd(o) })
	}
	h.Groups, h.HiddenGroups, h.Notes = s.groupLags(ctx, adm, h.Notes)
	// The endpoints are scraped at once (a hung one costs its 2s timeout
	// once, not once per endpoint after it).
	urls := s.cfg.OperatorMetricsURLs
	h.Scraped = make([]ScrapeResult, len(urls))
	scraped := make([]map[string]*dto.MetricFamily, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.Scraped[i], scraped[i] = scrape(ctx, u)
		}()
	}
	wg.Wait()
	for i, u := range urls {
		h.Checkpoints = append(h.Checkpoints, checkpointsOf(u, scraped[i], h.At)...)
		h.CDC = append(h.CDC, cdcOf(u, scraped[i], h.At)...)
	}
	h.Jobs = jobsOf(h.Groups, scraped, h.At)
	if len(s.cfg.OperatorMetricsURLs) > 0 && len(h.Checkpoints) == 0 {
		h.Notes = append(h.Notes, "no engine worker among the metrics endpoints has committed a checkpoint (loanflow_engine_last_checkpoint_timestamp_seconds)")
	}
	if len(s.cfg.OperatorMetricsURLs) > 0 && len(h.CDC) == 0 {
		h.Notes = append(h.Notes, "no CDC reader among the metrics endpoints (loanflow_cdc_replication_lag_bytes)")
	}
	if len(s.cfg.OperatorMetricsURLs) == 0 {
		h.Notes = append(h.Notes, "no pipeline metrics endpoints configured (OperatorMetricsURLs): checkpoint age and CDC replication lag come from the workers' and CDC reader's /metrics once they are configured")
	}
	return h
}

func (h *Health) addEnd(o kadm.ListedOffset) {
	if o.Err != nil {
		return
	}
	for i := range h.Topics {
		if h.Topics[i].Topic == o.Topic {
			h.Topics[i].Partitions++
			h.Topics[i].EndOffset += o.Offset
			return
		}
	}
	h.Topics = append(h.Topics, TopicHealth{Topic: o.Topic, Partitions: 1, EndOffset: o.Offset})
}

// groupLags describes the jobs' consumer groups (OperatorGroups, or every
// group named like a job's) with their net lag; it counts the others.
func (s *Server) groupLags(ctx context.Context, adm *kadm.Client, notes []string) ([]GroupHealth, int, []string) {
	groups, hidden := s.cfg.OperatorGroups, 0
	if len(groups) == 0 {
		listed, err := adm.ListGroups(ctx)
		if err != nil {
			return nil, 0, append(notes, "consumer groups unavailable: "+err.Error())
		}
		for _, g := range listed.Groups() {
			if jobOfGroup(g) != "" {
				groups = append(groups, g)
			} else {
				hidden++
			}
		}
	}
	if len(groups) == 0 {
		return nil, hidden, append(notes, "no job consumer groups yet (no pipeline jobs running)")
	}
	described, err := adm.DescribeGroups(ctx, groups...)
	if err != nil {
		return nil, hidden, append(notes, "consumer groups unavailable: "+err.Error())
	}
	var out []GroupHealth
	for _, d := range described.Sorted() {
		g := GroupHealth{Group: d.Group, State: d.State, Members: []string{}, LagExact: true}
		if d.Err != nil {
			g.State = "unknown: " + d.Err.Error()
		}
		for _, m := range d.Members {
			id := m.ClientID
			if m.InstanceID != nil {
				id = *m.InstanceID
			}
			g.Members = append(g.Members, id)
		}
		sort.Strings(g.Members)
		g.Lag, g.LagExact, g.LagError = s.netGroupLag(ctx, d.Group)
		out = append(out, g)
	}
	return out, hidden, notes
}

// operatorLagScan bounds the offsets the operator page reads per partition
// and refresh to count a lag net of markers; a longer backlog shows as
// "≤ offset difference".
const operatorLagScan = 5_000

// netGroupLag sums a group's lag net of transaction markers.
func (s *Server) netGroupLag(ctx context.Context, group string) (int64, bool, string) {
	parts, err := kafka.GroupLag(ctx, s.producer, group, operatorLagScan)
	if err != nil {
		return 0, false, err.Error()
	}
	var n int64
	exact := true
	for _, p := range parts {
		n += p.Lag
		exact = exact && p.Exact
	}
	return n, exact, ""
}

// scrape fetches one Prometheus endpoint (text format) and returns its
// families.
func scrape(ctx context.Context, url string) (ScrapeResult, map[string]*dto.MetricFamily) {
	res := ScrapeResult{URL: url}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		res.Error = err.Error()
		return res, nil
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		res.Error = "unreachable: " + err.Error()
		return res, nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		res.Error = fmt.Sprintf("status %d", resp.StatusCode)
		return res, nil
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		res.Error = "unparsable metrics: " + err.Error()
		return res, nil
	}
	return res, fams
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	return m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
}

func unixTime(sec float64) time.Time { return time.Unix(0, int64(sec*1e9)).UTC() }

// checkpointsOf reads the engine's last-checkpoint gauges.
func checkpointsOf(source string, fams map[string]*dto.MetricFamily, now time.Time) []CheckpointHealth {
	var out []CheckpointHealth
	for _, m := range fams["loanflow_engine_last_checkpoint_timestamp_seconds"].GetMetric() {
		if value(m) <= 0 {
			continue // no checkpoint yet
		}
		at := unixTime(value(m))
		out = append(out, CheckpointHealth{Source: source, Job: label(m, "job"), Worker: label(m, "worker"),
			LastCheckpoint: at, AgeSeconds: max(0, now.Sub(at).Seconds())})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Job+"/"+out[i].Worker < out[j].Job+"/"+out[j].Worker })
	return out
}

// cdcOf reads the CDC readers' lag gauges, one row per reader label.
func cdcOf(source string, fams map[string]*dto.MetricFamily, now time.Time) []CDCHealth {
	byReader := map[string]*CDCHealth{}
	get := func(m *dto.Metric) *CDCHealth {
		r := label(m, "reader")
		if byReader[r] == nil {
			byReader[r] = &CDCHealth{Source: source, Reader: r, LastCommitAgeSeconds: -1}
		}
		return byReader[r]
	}
	for _, m := range fams["loanflow_cdc_replication_lag_bytes"].GetMetric() {
		get(m).LagBytes = value(m)
	}
	set := func(name string, fn func(*CDCHealth, float64)) {
		for _, m := range fams[name].GetMetric() {
			if c := byReader[label(m, "reader")]; c != nil {
				fn(c, value(m))
			}
		}
	}
	set("loanflow_cdc_replication_lag_seconds", func(c *CDCHealth, v float64) { c.LagSeconds = v })
	set("loanflow_cdc_changes_per_second", func(c *CDCHealth, v float64) { c.ChangesPerSec = v })
	set("loanflow_cdc_snapshot_progress_ratio", func(c *CDCHealth, v float64) { c.SnapshotProgress = v })
	set("loanflow_cdc_last_commit_timestamp_seconds", func(c *CDCHealth, v float64) {
		if v > 0 {
			c.LastCommitAgeSeconds = max(0, now.Sub(unixTime(v)).Seconds())
		}
	})
	out := make([]CDCHealth, 0, len(byReader))
	for _, c := range byReader {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Reader < out[j].Reader })
	return out
}

// operatorPage serves the operator page: sign-in without a session, a
// 403 page to a session without scope admin (a lender's), and the page
// itself, which renders /operator/events.
func (s *Server) operatorPage(w http.ResponseWriter, r *http.Request) {
	if bearer(r, true) != "" && !s.allowLogin(w, r, "operator.page", "") {
		return
	}
	p, ok := s.pageSession(w, r, "operator")
	if !ok {
		return
	}
	if !p.Has(auth.ScopeAdmin) {
		s.loginOutcome(r, "operator.page", p.Subject, p.Lender, errBadClient)
		s.forbiddenPage(w, r, p, "The operator page shows the whole pipeline, so it needs an operator's sign-in (scope admin).")
		return
	}
	s.servePage(w, "operator.html")
}

// operatorEvents streams the pipeline health as "health" events, one at
// once and one every OperatorRefreshInterval, until the client, the
// server or the stream's session ends. It is audited once, when it opens.
func (s *Server) operatorEvents(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	fl, ok := w.(http.Flusher)
	if !ok {
		writeProblem(w, r, http.StatusInternalServerError, "internal", "streaming unsupported")
		return
	}
	busy := func() {
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, http.StatusServiceUnavailable, "too-many-streams", "too many open operator pages; close one or retry later")
	}
	if !s.lenderStreams.acquire(operatorStreams) {
		busy()
		return
	}
	defer s.lenderStreams.release(operatorStreams)
	if !s.streams.TryAcquire(1) {
		busy()
		return
	}
	defer s.streams.Release(1)
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "operator.stream", "pipeline", "", audit.ResultOK)) {
		return
	}
	extendDeadlines(w, time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, "retry: 2000\n\n")
	tick := time.NewTicker(s.cfg.OperatorRefreshInterval)
	defer tick.Stop()
	for {
		writeEvent(w, event{name: "health", data: s.sharedHealth(r.Context())})
		fl.Flush()
		select {
		case <-tick.C:
		case <-r.Context().Done():
			return
		case <-s.closing:
			return
		}
	}
}

// healthCache holds the last pipeline-health report, so that operator
// pages open at once share one report per refresh instead of each scraping
// every metrics endpoint and counting every group's lag.
type healthCache struct {
	flight singleflight.Group
	mu     sync.Mutex
	at     time.Time
	h      Health
}

// sharedHealth returns a report at most half a refresh interval old,
// computing it once for concurrent callers (independent of any one
// caller's cancellation).
func (s *Server) sharedHealth(ctx context.Context) Health {
	s.health.mu.Lock()
	if time.Since(s.health.at) < s.cfg.OperatorRefreshInterval/2 {
		h := s.health.h
		s.health.mu.Unlock()
		return h
	}
	s.health.mu.Unlock()
	v, _, _ := s.health.flight.Do("pipeline-health", func() (any, error) {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.OperatorRefreshInterval+5*time.Second)
		defer cancel()
		h := s.pipelineHealth(c)
		s.health.mu.Lock()
		s.health.at, s.health.h = time.Now(), h
		s.health.mu.Unlock()
		return h, nil
	})
	return v.(Health)
}

// operatorStreams is the slot key of operator pages in lenderStreams.
const operatorStreams = "_operator"

func (s *Server) getHealth(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "pipeline_health.read", "pipeline", "", audit.ResultOK)) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	writeJSON(w, http.StatusOK, s.pipelineHealth(ctx))
}
