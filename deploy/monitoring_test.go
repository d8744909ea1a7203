package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// promConfig is the part of prometheus.yml the tests read.
type promConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		HonorLabels   bool   `yaml:"honor_labels"`
		MetricsPath   string `yaml:"metrics_path"`
		StaticConfigs []struct {
			Targets []string          `yaml:"targets"`
			Labels  map[string]string `yaml:"labels"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// TestPrometheusScrapesEveryProcess checks that every long-running Loanflow
// process is scraped exactly once, at the port its flags make it listen on,
// on /metrics; and that workers, whose engine metrics carry a `job` label,
// are scraped with honor_labels so that label survives.
func TestPrometheusScrapesEveryProcess(t *testing.T) {
	st := loadStack(t)
	var pc promConfig
	readYAML(t, "prometheus/prometheus.yml", &pc)
	scraped := map[string]int{}
	for _, sc := range pc.ScrapeConfigs {
		mp := sc.MetricsPath
		if mp == "" {
			mp = "/metrics"
		}
		for _, s := range sc.StaticConfigs {
			for _, target := range s.Targets {
				e := hostPort(t, sc.JobName, target)
				if e.host == "localhost" {
					continue // Prometheus itself
				}
				st.reaches(t, "prometheus target of "+sc.JobName, e)
				scraped[e.host]++
				c, ok := st.cmds[e.host]
				if !ok {
					continue
				}
				if mp != "/metrics" {
					t.Errorf("%s: scraped at %s; Loanflow processes serve /metrics", e.host, mp)
				}
				if strings.Join(c.path, " ") == "job run" && !sc.HonorLabels {
					t.Errorf("scrape job %s: worker %s exports engine metrics labelled job=<name>; set honor_labels: true", sc.JobName, e.host)
				}
				if s.Labels["service"] != e.host {
					t.Errorf("target %s: label service=%q, want %q (the dashboards use it)", target, s.Labels["service"], e.host)
				}
			}
		}
	}
	for name := range st.cmds {
		if oneShot(st.p.Services[name]) {
			continue
		}
		if scraped[name] != 1 {
			t.Errorf("Loanflow process %s is scraped %d times, want once", name, scraped[name])
		}
	}
	if len(pc.RuleFiles) == 0 {
		t.Error("prometheus.yml loads no rule files")
	}
}

// promExpr is a PromQL expression of a dashboard or a rule, and where it is.
type promExpr struct{ where, expr string }

// ruleExprs are the expressions of every rule file.
func ruleExprs(t *testing.T) []promExpr {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy", "prometheus", "rules", "*.yml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no rule files in deploy/prometheus/rules (%v)", err)
	}
	var out []promExpr
	for _, f := range files {
		var rf struct {
			Groups []struct {
				Name  string `yaml:"name"`
				Rules []struct {
					Alert  string `yaml:"alert"`
					Record string `yaml:"record"`
					Expr   string `yaml:"expr"`
				} `yaml:"rules"`
			} `yaml:"groups"`
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &rf); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				out = append(out, promExpr{fmt.Sprintf("%s %s/%s%s", filepath.Base(f), g.Name, r.Alert, r.Record), r.Expr})
			}
		}
	}
	return out
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Datasource *datasourceRef  `json:"datasource"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type datasourceRef struct{ Type, UID string }

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// dashboards reads every dashboard in deploy/grafana/dashboards.
func dashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy", "grafana", "dashboards", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in deploy/grafana/dashboards (%v)", err)
	}
	out := map[string]dashboard{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		dec := json.NewDecoder(strings.NewReader(string(b)))
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = d
	}
	return out
}

func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// dashboardExprs are the panel and variable queries of every dashboard,
// with Grafana's variables replaced so they are plain PromQL.
func dashboardExprs(t *testing.T) []promExpr {
	var out []promExpr
	for file, d := range dashboards(t) {
		for _, p := range allPanels(d.Panels) {
			for _, tg := range p.Targets {
				out = append(out, promExpr{fmt.Sprintf("%s panel %d %q %s", file, p.ID, p.Title, tg.RefID), grafanaToPromQL(tg.Expr)})
			}
		}
		for _, v := range d.Templating.List {
			if m := labelValuesRE.FindStringSubmatch(v.Definition); m != nil {
				out = append(out, promExpr{fmt.Sprintf("%s variable %s", file, v.Name), fmt.Sprintf("count by (%s) (%s)", m[2], m[1])})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].where < out[j].where })
	return out
}

var (
	labelValuesRE = regexp.MustCompile(`^label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)$`)
	grafanaVarRE  = regexp.MustCompile(`\$\{?(\w+)\}?`)
)

func grafanaToPromQL(e string) string {
	return grafanaVarRE.ReplaceAllStringFunc(e, func(v string) string {
		switch strings.Trim(v, "${}") {
		case "__rate_interval", "__interval", "__range":
			return "5m"
		}
		return ".*"
	})
}

// TestGrafanaDashboards checks the dashboards' structure and their wiring to
// the provisioned datasource and to the compose mounts.
func TestGrafanaDashboards(t *testing.T) {
	var ds struct {
		Datasources []struct{ UID, Type string } `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" {
		t.Fatalf("want one prometheus datasource, got %+v", ds.Datasources)
	}
	uid := ds.Datasources[0].UID
	checkRef := func(where string, r *datasourceRef) {
		if r != nil && (r.UID != uid || r.Type != "prometheus") {
			t.Errorf("%s: datasource %+v, want the provisioned {prometheus %s}", where, *r, uid)
		}
	}
	uids := map[string]string{}
	for file, d := range dashboards(t) {
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: uid and title are required", file)
		}
		if other, dup := uids[d.UID]; dup {
			t.Errorf("%s and %s share uid %s", file, other, d.UID)
		}
		uids[d.UID] = file
		vars := map[string]bool{}
		for _, v := range d.Templating.List {
			vars[v.Name] = true
			checkRef(file+" variable "+v.Name, v.Datasource)
		}
		for i, a := range d.Panels {
			for _, b := range d.Panels[i+1:] {
				ga, gb := a.GridPos, b.GridPos
				if ga.X < gb.X+gb.W && gb.X < ga.X+ga.W && ga.Y < gb.Y+gb.H && gb.Y < ga.Y+ga.H {
					t.Errorf("%s: panels %q and %q overlap", file, a.Title, b.Title)
				}
			}
		}
		ids := map[int]bool{}
		for _, p := range allPanels(d.Panels) {
			where := fmt.Sprintf("%s panel %d %q", file, p.ID, p.Title)
			if ids[p.ID] {
				t.Errorf("%s: duplicate panel id", where)
			}
			ids[p.ID] = true
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: gridPos %+v outside the 24-column grid", where, p.GridPos)
			}
			if p.Type == "row" {
				continue
			}
			checkRef(where, p.Datasource)
			if len(p.Targets) == 0 {
				t.Errorf("%s: no queries", where)
			}
			for _, tg := range p.Targets {
				checkRef(where, tg.Datasource)
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s %s: empty expr", where, tg.RefID)
				}
				for _, m := range grafanaVarRE.FindAllStringSubmatch(tg.Expr, -1) {
					if !strings.HasPrefix(m[1], "__") && !vars[m[1]] {
						t.Errorf("%s: uses $%s, which the dashboard does not define", where, m[1])
					}
				}
			}
		}
	}
	checkGrafanaMounts(t)
}

// checkGrafanaMounts checks that the dashboard provider reads the directory
// compose mounts the dashboards at, and the home dashboard is one of them.
func checkGrafanaMounts(t *testing.T) {
	var prov struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "grafana/provisioning/dashboards/loanflow.yml", &prov)
	p := loadCompose(t)
	g := p.Services["grafana"]
	mounts := map[string]string{}
	for _, v := range g.Volumes {
		mounts[v.Target] = v.Source
	}
	root := repoRoot(t)
	if len(prov.Providers) != 1 || mounts[prov.Providers[0].Options.Path] != filepath.Join(root, "deploy", "grafana", "dashboards") {
		t.Errorf("dashboard provider paths %+v; compose mounts %v", prov.Providers, mounts)
	}
	if mounts["/etc/grafana/provisioning"] != filepath.Join(root, "deploy", "grafana", "provisioning") {
		t.Errorf("grafana: deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning (%v)", mounts)
	}
	home := env(g, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
	dir, file := filepath.Split(home)
	src, ok := mounts[filepath.Clean(dir)]
	if !ok {
		t.Errorf("home dashboard %s is not under a mount", home)
	} else if _, err := os.Stat(filepath.Join(src, file)); err != nil {
		t.Errorf("home dashboard %s: %v", home, err)
	}
}

// TestQueriesUseExportedMetrics checks every series and label that the
// dashboards and alert rules query against the metrics the Go sources
// define (see goMetrics), so a renamed metric or label fails here instead
// of leaving an empty panel or an alert that never fires.
func TestQueriesUseExportedMetrics(t *testing.T) {
	defs := goMetrics(t, repoRoot(t))
	exprs := append(ruleExprs(t), dashboardExprs(t)...)
	used := map[string]bool{}
	for _, e := range exprs {
		for _, err := range checkExpr(e.expr, defs, used) {
			t.Errorf("%s: %v\n    %s", e.where, err, e.expr)
		}
	}
	// Every family of metrics the brief names has a panel or rule.
	for _, prefix := range []string{"loanflow_engine_", "loanflow_cdc_", "loanflow_api_", "loanflow_bureau_"} {
		n := 0
		for name := range used {
			if strings.HasPrefix(name, prefix) {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no dashboard or rule uses %s* metrics", prefix)
		}
	}
	var unused []string
	for name := range defs {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	t.Logf("metrics exported but on no dashboard or rule: %v", unused)
}

// targetLabels are added by the scrape (prometheus.yml) to every series.
var targetLabels = map[string]bool{"job": true, "instance": true, "service": true}

// standardSeries are series that are not Loanflow's own but that
// Prometheus produces for every target.
var standardSeries = map[string]bool{"up": true}

var (
	stringRE   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcherRE  = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*$`)
	groupingRE = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	rangeRE    = regexp.MustCompile(`\[[^\]]*\]`)
	identRE    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

var promKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
	"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true}

// checkExpr finds the series and labels of a PromQL expression and checks
// them against defs; it records the Loanflow metrics used.
func checkExpr(expr string, defs map[string]metricDef, used map[string]bool) []error {
	var errs []error
	// Strings hold label values and regexes, never names.
	s := stringRE.ReplaceAllString(expr, `""`)
	allowed := map[string]bool{}
	var series []string
	for _, m := range selectorRE.FindAllStringSubmatch(s, -1) {
		name := m[1]
		labels, err := seriesLabels(name, defs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, mt := range strings.Split(m[2], `""`) {
			mt = strings.Trim(strings.TrimSpace(mt), ",")
			if mt == "" {
				continue
			}
			mm := matcherRE.FindStringSubmatch(mt)
			if mm == nil {
				errs = append(errs, fmt.Errorf("cannot read label matcher %q", mt))
				continue
			}
			if !labels[mm[1]] {
				errs = append(errs, fmt.Errorf("%s has no label %q (labels %v)", name, mm[1], keys(labels)))
			}
		}
	}
	s = selectorRE.ReplaceAllString(s, "$1 ")
	s = rangeRE.ReplaceAllString(s, " ")
	var grouping []string
	for _, m := range groupingRE.FindAllStringSubmatch(s, -1) {
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				grouping = append(grouping, l)
			}
		}
	}
	s = groupingRE.ReplaceAllString(s, " ")
	for _, loc := range identRE.FindAllStringIndex(s, -1) {
		word := s[loc[0]:loc[1]]
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // a number's exponent or unit
		}
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if promKeywords[word] || strings.HasPrefix(rest, "(") {
			continue // keyword, function or aggregation
		}
		series = append(series, word)
	}
	for _, name := range series {
		labels, err := seriesLabels(name, defs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if base := baseMetric(name, defs); base != "" {
			used[base] = true
		}
		for l := range labels {
			allowed[l] = true
		}
	}
	for _, l := range grouping {
		if !allowed[l] {
			errs = append(errs, fmt.Errorf("groups by label %q, which none of its series %v has", l, series))
		}
	}
	if len(series) == 0 {
		errs = append(errs, fmt.Errorf("no series in expression"))
	}
	return errs
}

// baseMetric is the metric a series name belongs to (histograms expose
// _bucket, _sum and _count series), or "" if the Go sources define none.
func baseMetric(name string, defs map[string]metricDef) string {
	if _, ok := defs[name]; ok {
		return name
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suf)
		if !ok {
			continue
		}
		d, ok := defs[base]
		if ok && (d.kind == "histogram" || (d.kind == "summary" && suf != "_bucket")) {
			return base
		}
	}
	return ""
}

// seriesLabels are the labels a series can carry once scraped.
func seriesLabels(name string, defs map[string]metricDef) (map[string]bool, error) {
	out := map[string]bool{}
	for l := range targetLabels {
		out[l] = true
	}
	if standardSeries[name] {
		return out, nil
	}
	if name == "" {
		return nil, fmt.Errorf("selector without a metric name")
	}
	base := baseMetric(name, defs)
	if base == "" {
		return nil, fmt.Errorf("series %s is not exported by the Go sources (no metric of that name, or not a histogram for _bucket/_sum/_count)", name)
	}
	for l := range defs[base].labels {
		out[l] = true
	}
	if strings.HasSuffix(name, "_bucket") && base != name {
		out["le"] = true
	}
	return out, nil
}

// TestCheckExprCatchesMistakes pins checkExpr's verdicts on expressions
// with known mistakes, so the metric check cannot pass vacuously.
func TestCheckExprCatchesMistakes(t *testing.T) {
	defs := map[string]metricDef{
		"loanflow_x_total":   {name: "loanflow_x_total", kind: "counter", labels: map[string]bool{"job": true, "operator": true}},
		"loanflow_d_seconds": {name: "loanflow_d_seconds", kind: "histogram", labels: map[string]bool{"route": true}},
		"loanflow_g":         {name: "loanflow_g", kind: "gauge", labels: map[string]bool{}},
	}
	cases := []struct {
		expr string
		errs int
	}{
		{`sum by (job, operator) (rate(loanflow_x_total{job=~"a|b"}[5m]))`, 0},
		{`histogram_quantile(0.99, sum by (le, route) (rate(loanflow_d_seconds_bucket{route!~".*(x|y)"}[5m]))) > 0.5`, 0},
		{`time() - max(loanflow_g) > 1e3`, 0},
		{`up{job=~"loanflow-.*"} == 0`, 0},
		{`rate(loanflow_y_total[5m])`, 1},                      // unknown metric
		{`rate(loanflow_x_total{route="a"}[5m])`, 1},           // unknown label
		{`sum by (route) (rate(loanflow_x_total[5m]))`, 1},     // grouping by a label it lacks
		{`loanflow_g_bucket`, 1},                               // a gauge has no buckets
		{`sum(rate(loanflow_d_seconds_count[5m])) by (le)`, 1}, // le only on _bucket
		{`go_goroutines`, 1},                                   // not Loanflow's
		{`sum(rate(loanflow_x_total{operator="a,b"}[5m]))`, 0}, // commas inside a value
	}
	for _, c := range cases {
		if errs := checkExpr(c.expr, defs, map[string]bool{}); len(errs) != c.errs {
			t.Errorf("%s: %d errors %v, want %d", c.expr, len(errs), errs, c.errs)
		}
	}
}

// TestPromtool runs promtool on the Prometheus config, the rules, the rule
// unit tests, and the PromQL of every dashboard panel (as recording rules,
// which promtool parses). CI installs promtool (scripts/install-deps.sh).
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool not found: apt-get install prometheus (or run `make deps` as root)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := filepath.Join(repoRoot(t), "deploy", "prometheus")
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("check", "config", "prometheus.yml")
	tests, _ := filepath.Glob(filepath.Join(dir, "tests", "*.yml"))
	if len(tests) == 0 {
		t.Error("no rule unit tests in deploy/prometheus/tests")
	}
	for _, f := range tests {
		run("test", "rules", f)
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboards\n    rules:\n")
	for i, e := range dashboardExprs(t) {
		fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %s\n", i, strings.TrimSpace(mustJSON(e.expr)))
	}
	tmp := filepath.Join(t.TempDir(), "dashboards.yml")
	if err := os.WriteFile(tmp, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run("check", "rules", tmp)
}

// mustJSON quotes s for YAML (JSON strings are YAML strings).
func mustJSON(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// routeMatcher is an equality matcher on the API's route label.
var routeMatcher = regexp.MustCompile(`\broute="([^"]+)"`)

// TestRouteLabelsAreRoutes checks that every route a dashboard or rule
// names (route="METHOD /path") is a pattern the API registers: the label
// is the request's ServeMux pattern, so a path that drifts from the mux
// leaves a panel empty and an alert silent. The negative control is a
// route that is not registered.
func TestRouteLabelsAreRoutes(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "api", "server.go"))
	if err != nil {
		t.Fatal(err)
	}
	registered := func(route string) bool { return strings.Contains(string(src), `mux.HandleFunc("`+route+`"`) }
	if registered("POST /v1/no-such-route") {
		t.Fatal("negative control: an unregistered route counts as registered")
	}
	n := 0
	for _, e := range append(ruleExprs(t), dashboardExprs(t)...) {
		for _, m := range routeMatcher.FindAllStringSubmatch(e.expr, -1) {
			n++
			if !registered(m[1]) {
				t.Errorf("%s: route %q is not a route of api/server.go\n    %s", e.where, m[1], e.expr)
			}
		}
	}
	if n == 0 {
		t.Fatal("no dashboard or rule names a route: the check checked nothing")
	}
}
