package api

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
)

// Health is the pipeline health shown on the operator page.
type Health struct {
	At            time.Time          `json:"at"`
	Checkpoints   []CheckpointHealth `json:"checkpoints"`
	CDC           []CDCHealth        `json:"cdc"`
	Topics        []TopicHealth      `json:"topics"`
	Groups        []GroupHealth      `json:"groups"`
	Scraped       []ScrapeResult     `json:"scraped"`
	Notes         []string           `json:"notes,omitempty"`
	HubConsumed   int64              `json:"hub_records_consumed"`
	HubLastRecord *time.Time         `json:"hub_last_record,omitempty"`
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

// GroupHealth is a consumer group's committed lag.
type GroupHealth struct {
	Group string `json:"group"`
	State string `json:"state"`
	Lag   int64  `json:"lag"`
}

// ScrapeResult holds the pipeline-health series of one metrics endpoint.
type ScrapeResult struct {
	URL    string   `json:"url"`
	Error  string   `json:"error,omitempty"`
	Series []Series `json:"series,omitempty"`
}

// Series is one sample.
type Series struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
}

// healthSeries selects the lag, checkpoint and replication series.
func healthSeries(name string) bool {
	for _, k := range []string{"lag", "checkpoint", "replication", "watermark"} {
		if strings.Contains(name, k) {
			return true
		}
	}
	return false
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
	h.Groups, h.Notes = s.groupLags(ctx, adm, h.Notes)
	for _, u := range s.cfg.OperatorMetricsURLs {
		res, fams := scrape(ctx, u)
		h.Scraped = append(h.Scraped, res)
		h.Checkpoints = append(h.Checkpoints, checkpointsOf(u, fams, h.At)...)
		h.CDC = append(h.CDC, cdcOf(u, fams, h.At)...)
	}
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

func (s *Server) groupLags(ctx context.Context, adm *kadm.Client, notes []string) ([]GroupHealth, []string) {
	groups := s.cfg.OperatorGroups
	if len(groups) == 0 {
		listed, err := adm.ListGroups(ctx)
		if err != nil {
			return nil, append(notes, "consumer groups unavailable: "+err.Error())
		}
		groups = listed.Groups()
	}
	if len(groups) == 0 {
		return nil, append(notes, "no consumer groups yet (no pipeline jobs running)")
	}
	lags, err := adm.Lag(ctx, groups...)
	if err != nil {
		return nil, append(notes, "group lag unavailable: "+err.Error())
	}
	var out []GroupHealth
	lags.Each(func(l kadm.DescribedGroupLag) {
		out = append(out, GroupHealth{Group: l.Group, State: l.State, Lag: l.Lag.Total()})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Group < out[j].Group })
	return out, notes
}

// scrape fetches one Prometheus endpoint (text format) and returns the
// pipeline-health series and every family.
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
	for name, f := range fams {
		if healthSeries(name) {
			res.Series = append(res.Series, flatten(name, f)...)
		}
	}
	sort.Slice(res.Series, func(i, j int) bool { return res.Series[i].Name < res.Series[j].Name })
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

func flatten(name string, f *dto.MetricFamily) []Series {
	var out []Series
	for _, m := range f.GetMetric() {
		var labels []string
		for _, l := range m.GetLabel() {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		n := name
		if len(labels) > 0 {
			n += "{" + strings.Join(labels, ",") + "}"
		}
		out = append(out, Series{Name: n, Value: value(m)})
	}
	return out
}

var operatorTmpl = template.Must(template.New("op").Funcs(template.FuncMap{
	"ago": func(t *time.Time) string {
		if t == nil {
			return "never"
		}
		return fmt.Sprintf("%.1fs ago", time.Since(*t).Seconds())
	},
	"pct": func(r float64) float64 { return 100 * r },
}).Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Loanflow operator</title>
<meta http-equiv="refresh" content="5">
<style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b2430}table{border-collapse:collapse;margin-bottom:1rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}.note{color:#9a6700}.err{color:#cf222e}</style></head>
<body><h1>Pipeline health</h1><p>As of {{.At.Format "15:04:05"}} UTC · API hub consumed {{.HubConsumed}} records, last {{ago .HubLastRecord}}</p>
{{range .Notes}}<p class="note">{{.}}</p>{{end}}
<h2>Checkpoints</h2><table id="checkpoints"><tr><th>Job</th><th>Worker</th><th>Last checkpoint (UTC)</th><th>Age</th><th>Source</th></tr>
{{range .Checkpoints}}<tr><td>{{.Job}}</td><td>{{.Worker}}</td><td>{{.LastCheckpoint.Format "15:04:05.000"}}</td><td class="age">{{printf "%.1fs" .AgeSeconds}}</td><td>{{.Source}}</td></tr>{{end}}</table>
<h2>CDC replication</h2><table id="cdc"><tr><th>Reader</th><th>Lag (bytes)</th><th>Lag (s)</th><th>Last Kafka commit</th><th>Changes/s</th><th>Snapshot</th><th>Source</th></tr>
{{range .CDC}}<tr><td>{{.Reader}}</td><td class="lag-bytes">{{printf "%.0f" .LagBytes}}</td><td class="lag-seconds">{{printf "%.3f" .LagSeconds}}</td><td>{{if lt .LastCommitAgeSeconds 0.0}}n/a{{else}}{{printf "%.1fs ago" .LastCommitAgeSeconds}}{{end}}</td><td>{{printf "%.0f" .ChangesPerSec}}</td><td>{{printf "%.0f%%" (pct .SnapshotProgress)}}</td><td>{{.Source}}</td></tr>{{end}}</table>
<h2>Topics</h2><table id="topics"><tr><th>Topic</th><th>Partitions</th><th>End offset (sum)</th></tr>
{{range .Topics}}<tr><td>{{.Topic}}</td><td>{{.Partitions}}</td><td>{{.EndOffset}}</td></tr>{{end}}</table>
<h2>Consumer lag</h2><table id="groups"><tr><th>Group</th><th>State</th><th>Lag</th></tr>
{{range .Groups}}<tr><td>{{.Group}}</td><td>{{.State}}</td><td>{{.Lag}}</td></tr>{{end}}</table>
<h2>Pipeline metrics</h2>
{{range .Scraped}}<h3>{{.URL}}</h3>{{if .Error}}<p class="err">{{.Error}}</p>{{end}}
<table>{{range .Series}}<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>{{end}}</table>{{end}}
</body></html>`))

func (s *Server) operatorPage(w http.ResponseWriter, r *http.Request) {
	tok := bearer(r, true)
	if tok == "" {
		s.servePage(w, "login.html")
		return
	}
	if !s.allowLogin(w, r, "operator.page", "") {
		return
	}
	p, err := s.authenticate(r.Context(), tok)
	if err != nil || !p.Has(auth.ScopeAdmin) {
		s.loginOutcome(r, "operator.page", p.Subject, p.Lender, errBadClient)
		writeProblem(w, r, http.StatusForbidden, "insufficient-scope", "the operator page needs scope admin")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	h := s.pipelineHealth(ctx)
	if err := s.audit.Append(ctx, s.auditEntry(ctx, p, "operator.read", "pipeline", "", audit.ResultOK)); err != nil {
		writeProblem(w, r, http.StatusServiceUnavailable, "audit-unavailable", "the audit log could not be written; retry")
		return
	}
	var page bytes.Buffer
	if err := operatorTmpl.Execute(&page, h); err != nil {
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not render the operator page")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", pageCSP(page.Bytes()))
	_, _ = w.Write(page.Bytes())
}

func (s *Server) getHealth(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "pipeline_health.read", "pipeline", "", audit.ResultOK)) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	writeJSON(w, http.StatusOK, s.pipelineHealth(ctx))
}
