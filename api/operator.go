package api

import (
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
	At            time.Time      `json:"at"`
	Topics        []TopicHealth  `json:"topics"`
	Groups        []GroupHealth  `json:"groups"`
	Scraped       []ScrapeResult `json:"scraped"`
	Notes         []string       `json:"notes,omitempty"`
	HubConsumed   int64          `json:"hub_records_consumed"`
	HubLastRecord *time.Time     `json:"hub_last_record,omitempty"`
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
		h.Scraped = append(h.Scraped, scrape(ctx, u))
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

func scrape(ctx context.Context, url string) ScrapeResult {
	res := ScrapeResult{URL: url}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		res.Error = "unreachable: " + err.Error()
		return res
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		res.Error = "unparsable metrics: " + err.Error()
		return res
	}
	for name, f := range fams {
		if healthSeries(name) {
			res.Series = append(res.Series, flatten(name, f)...)
		}
	}
	sort.Slice(res.Series, func(i, j int) bool { return res.Series[i].Name < res.Series[j].Name })
	return res
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
		v := m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
		out = append(out, Series{Name: n, Value: v})
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
}).Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Loanflow operator</title>
<meta http-equiv="refresh" content="5">
<style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b2430}table{border-collapse:collapse;margin-bottom:1rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}.note{color:#9a6700}.err{color:#cf222e}</style></head>
<body><h1>Pipeline health</h1><p>As of {{.At.Format "15:04:05"}} UTC · API hub consumed {{.HubConsumed}} records, last {{ago .HubLastRecord}}</p>
{{range .Notes}}<p class="note">{{.}}</p>{{end}}
<h2>Topics</h2><table id="topics"><tr><th>Topic</th><th>Partitions</th><th>End offset (sum)</th></tr>
{{range .Topics}}<tr><td>{{.Topic}}</td><td>{{.Partitions}}</td><td>{{.EndOffset}}</td></tr>{{end}}</table>
<h2>Consumer lag</h2><table id="groups"><tr><th>Group</th><th>State</th><th>Lag</th></tr>
{{range .Groups}}<tr><td>{{.Group}}</td><td>{{.State}}</td><td>{{.Lag}}</td></tr>{{end}}</table>
<h2>Checkpoints and CDC replication</h2>
{{range .Scraped}}<h3>{{.URL}}</h3>{{if .Error}}<p class="err">{{.Error}}</p>{{end}}
<table>{{range .Series}}<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>{{end}}</table>{{end}}
</body></html>`))

func (s *Server) operatorPage(w http.ResponseWriter, r *http.Request) {
	tok := bearer(r, true)
	if tok == "" {
		s.servePage(w, "login.html")
		return
	}
	p, err := s.validator.Validate(r.Context(), tok)
	if err != nil || !p.Has(auth.ScopeAdmin) {
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
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = operatorTmpl.Execute(w, h)
}

func (s *Server) getHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	writeJSON(w, http.StatusOK, s.pipelineHealth(ctx))
}
