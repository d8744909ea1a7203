package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"gopkg.in/yaml.v3"

	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestStackRunsAsComposed is `docker compose up --wait` without Docker: it
// runs every Loanflow service of docker-compose.yml as a real process of
// the binary the Dockerfile builds, with the service's own command line and
// environment, against real servers standing in for the infrastructure
// containers (PostgreSQL with wal_level=logical, redis-server, the embedded
// Kafka-protocol broker, `loanflow registry run` for the Confluent
// registry). Container addresses, listen addresses, volumes and the
// mounted cdc.yaml are mapped to local ones; kafka-init's topics are created
// as its script says. Services start in depends_on order, and each
// service_healthy dependency waits for the service's own healthcheck
// command (the image's healthcheck binary). Then every Prometheus target
// must serve metrics the Go sources define, a row written to PostgreSQL
// must reach the cache-invalidation job through CDC, and a real Prometheus
// server with deploy/prometheus's config and rules must see every target up,
// evaluate every rule and every dashboard query (see checkPrometheus).
func TestStackRunsAsComposed(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole stack; not in -short mode")
	}
	st := loadStack(t)
	ls := newLocalStack(t, st)
	for _, name := range startOrder(t, st) {
		ls.start(name)
	}
	for _, name := range ls.longRunning() {
		ls.waitHealthy(name, 2*time.Minute)
	}
	t.Logf("healthy: %v", ls.longRunning())
	ls.checkScrapeTargets()
	ls.checkDataFlows()
	ls.checkPrometheus()
}

// localStack maps the compose stack onto processes and servers here.
type localStack struct {
	t     *testing.T
	st    stack
	bins  map[string]string
	dir   string
	dsn   string
	addr  map[string]string // "service:port" as compose names it → 127.0.0.1:N
	procs map[string]*proc
}

// proc is a running process of the stack.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it exits
	err  error         // its exit, once done is closed
}

func newLocalStack(t *testing.T, st stack) *localStack {
	ls := &localStack{t: t, st: st, bins: builtBinaries(t), dir: t.TempDir(), addr: map[string]string{},
		procs: map[string]*proc{}}
	for svc, ports := range st.listen {
		if _, ok := st.cmds[svc]; ok {
			for port := range ports {
				ls.addr[svc+":"+port] = freeAddr(t)
			}
		}
	}
	brk := testenv.NewBroker(t, localsvc.BrokerOptions{})
	ls.addr["kafka:19092"] = brk.Addrs()[0]
	ls.addr["redis:6379"] = testenv.Redis(t).Addr()
	ls.dsn = testenv.NewDatabase(t)
	ls.addr["schema-registry:8081"] = freeAddr(t)
	ls.run("schema-registry", []string{"registry", "run", "--brokers", brk.Addrs()[0], "--listen", ls.addr["schema-registry:8081"]}, nil)
	ls.waitURL("schema-registry", "http://"+ls.addr["schema-registry:8081"]+"/subjects", time.Minute)
	ls.kafkaInit(brk.Addrs())
	t.Cleanup(ls.stopAll)
	return ls
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startOrder sorts the Loanflow services so each comes after the Loanflow
// services it depends on (infrastructure is already up).
func startOrder(t *testing.T, st stack) []string {
	var order []string
	done := map[string]bool{}
	var visit func(string, int)
	visit = func(name string, depth int) {
		if done[name] {
			return
		}
		if depth > len(st.cmds) {
			t.Fatalf("depends_on cycle through %s", name)
		}
		deps := keys(boolKeys(st.p.Services[name].DependsOn))
		for _, d := range deps {
			if _, ok := st.cmds[d]; ok {
				visit(d, depth+1)
			}
		}
		done[name] = true
		order = append(order, name)
	}
	names := keys(boolKeys(st.cmds))
	for _, n := range names {
		visit(n, 0)
	}
	return order
}

func boolKeys[V any](m map[string]V) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

// start runs service name as composed and, if another service waits for
// it, waits as compose would: for its healthcheck or its successful exit.
func (ls *localStack) start(name string) {
	s := ls.st.p.Services[name]
	args := make([]string, len(s.Command))
	for i, a := range s.Command {
		args[i] = ls.rewrite(name, a)
	}
	env := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			env[k] = ls.rewrite(name, *v)
		}
	}
	if v, ok := env["DATABASE_URL"]; ok {
		// The local database; as its owner where the service's URL names
		// the schema owner (POSTGRES_USER), else as the role it names
		// (the API connects as its least-privileged role).
		local, err := url.Parse(ls.dsn)
		if err != nil {
			ls.t.Fatal(err)
		}
		owner := ls.st.p.Services["postgres"].Environment["POSTGRES_USER"]
		if u, err := url.Parse(v); err == nil && u.User != nil && (owner == nil || u.User.Username() != *owner) {
			local.User = url.User(u.User.Username())
		}
		env["DATABASE_URL"] = local.String()
	}
	ls.run(name, args, env)
	if oneShot(s) {
		p := ls.procs[name]
		select {
		case <-p.done:
			if p.err != nil {
				ls.t.Fatalf("one-shot %s (%v) failed: %v\n%s", name, args, p.err, ls.logTail(name))
			}
		case <-time.After(time.Minute):
			ls.t.Fatalf("one-shot %s did not finish in a minute\n%s", name, ls.logTail(name))
		}
		return
	}
	for _, other := range ls.st.p.Services {
		if d, ok := other.DependsOn[name]; ok && d.Condition == types.ServiceConditionHealthy {
			ls.waitHealthy(name, 2*time.Minute)
			return
		}
	}
}

// rewrite maps a compose argument to this machine: container addresses,
// listen addresses, host-published ports, and volume paths.
func (ls *localStack) rewrite(svc, arg string) string {
	if strings.HasPrefix(arg, "postgres://") {
		return ls.dsn
	}
	if port, ok := strings.CutPrefix(arg, "0.0.0.0:"); ok {
		if a, ok := ls.addr[svc+":"+port]; ok {
			return a
		}
	}
	s := ls.st.p.Services[svc]
	for _, v := range s.Volumes {
		if rest, ok := strings.CutPrefix(arg, v.Target); ok && (rest == "" || rest[0] == '/') {
			return ls.mountPath(svc, v) + rest
		}
	}
	for _, other := range ls.st.p.Services {
		for _, p := range other.Ports {
			if a, ok := ls.addr[fmt.Sprintf("%s:%d", other.Name, p.Target)]; ok {
				arg = strings.ReplaceAll(arg, "localhost:"+p.Published, a)
			}
		}
	}
	from := keys(boolKeys(ls.addr))
	sort.Slice(from, func(i, j int) bool { return len(from[i]) > len(from[j]) })
	for _, k := range from {
		arg = strings.ReplaceAll(arg, k, ls.addr[k])
	}
	return arg
}

// mountPath is where a service's volume lives here: named volumes are
// directories shared by the services that mount them; cdc.yaml is rewritten
// for the local servers.
func (ls *localStack) mountPath(svc string, v types.ServiceVolumeConfig) string {
	if v.Type == types.VolumeTypeVolume {
		p := filepath.Join(ls.dir, "volumes", v.Source)
		if err := os.MkdirAll(p, 0o700); err != nil {
			ls.t.Fatal(err)
		}
		return p
	}
	if filepath.Base(v.Source) == "cdc.yaml" {
		return ls.localCDCConfig(v.Source)
	}
	return v.Source
}

// localCDCConfig rewrites cdc.yaml's addresses, its schema path and its name
// (the slot lives on a cluster other tests share).
func (ls *localStack) localCDCConfig(src string) string {
	b, err := os.ReadFile(src)
	if err != nil {
		ls.t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		ls.t.Fatal(err)
	}
	cfg["name"] = testenv.Name(ls.t, "cdc")
	cfg["database_url"] = ls.dsn
	cfg["schema_registry_url"] = ls.rewrite("cdc", cfg["schema_registry_url"].(string))
	brokers := cfg["brokers"].([]any)
	for i, b := range brokers {
		brokers[i] = ls.rewrite("cdc", b.(string))
	}
	root := repoRoot(ls.t)
	for _, v := range cfg["views"].([]any) {
		view := v.(map[string]any)
		if f, ok := view["value_schema_file"].(string); ok {
			view["value_schema_file"] = filepath.Join(root, "schemas", "avro", strings.TrimPrefix(f, imageSchemaDir+"/"))
		}
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		ls.t.Fatal(err)
	}
	p := filepath.Join(ls.dir, "cdc.yaml")
	if err := os.WriteFile(p, out, 0o600); err != nil {
		ls.t.Fatal(err)
	}
	return p
}

var kafkaTopicRE = regexp.MustCompile(`--create\b.*?--topic\s+(\S+)(.*)`)

// kafkaInit creates the topics kafka-init's script creates, with its
// partition counts and configs.
func (ls *localStack) kafkaInit(brokers []string) {
	script := strings.ReplaceAll(strings.Join(ls.st.p.Services["kafka-init"].Command, " "), "\\\n", " ")
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		ls.t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	n := 0
	for _, line := range strings.Split(script, "\n") {
		m := kafkaTopicRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		f := strings.Fields(m[2])
		parts, cfgs := int32(-1), map[string]*string{}
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "--partitions":
				p, err := strconv.Atoi(f[i+1])
				if err != nil {
					ls.t.Fatalf("kafka-init: --partitions %q", f[i+1])
				}
				parts = int32(p)
			case "--config":
				k, v, _ := strings.Cut(f[i+1], "=")
				cfgs[k] = &v
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := adm.CreateTopic(ctx, parts, 1, cfgs, m[1])
		cancel()
		if err == nil {
			err = resp.Err
		}
		if err != nil {
			ls.t.Fatalf("kafka-init: creating %s: %v", m[1], err)
		}
		n++
	}
	if n == 0 {
		ls.t.Fatal("kafka-init: no `kafka-topics.sh --create` found in its script")
	}
}

// run starts bin args as process name with env on top of this process's.
func (ls *localStack) run(name string, args []string, env map[string]string) {
	cmd := exec.Command(ls.bins["./cmd/loanflow"], args...)
	cmd.Dir = ls.dir
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logf, err := os.Create(filepath.Join(ls.dir, name+".log"))
	if err != nil {
		ls.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		ls.t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	ls.procs[name] = p
}

func (ls *localStack) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(ls.dir, name+".log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// stopAll stops the processes as `docker compose down` does: SIGTERM, then
// SIGKILL after a grace period.
func (ls *localStack) stopAll() {
	for _, p := range ls.procs {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.After(30 * time.Second)
	for _, p := range ls.procs {
		select {
		case <-p.done:
		case <-deadline:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

func (ls *localStack) longRunning() []string {
	var out []string
	for name := range ls.st.cmds {
		if !oneShot(ls.st.p.Services[name]) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// waitHealthy runs the service's healthcheck command (the image's
// healthcheck binary, with the URL mapped here) until it passes.
func (ls *localStack) waitHealthy(name string, limit time.Duration) {
	test := ls.st.p.Services[name].HealthCheck.Test
	args := make([]string, 0, len(test))
	for _, a := range test[2:] {
		args = append(args, ls.rewrite(name, strings.Replace(a, "127.0.0.1:", name+":", 1)))
	}
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-ls.procs[name].done:
			ls.t.Fatalf("%s exited before it was healthy: %v\n%s", name, ls.procs[name].err, ls.logTail(name))
		default:
		}
		out, err := exec.Command(ls.bins["./deploy/cmd/healthcheck"], args...).CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			ls.t.Fatalf("%s not healthy after %v: healthcheck %v: %s\n%s", name, limit, args, out, ls.logTail(name))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (ls *localStack) waitURL(name, url string, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for {
		if p, ok := ls.procs[name]; ok {
			select {
			case <-p.done:
				ls.t.Fatalf("%s exited: %v\n%s", name, p.err, ls.logTail(name))
			default:
			}
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return
			}
		}
		if time.Now().After(deadline) {
			ls.t.Fatalf("%s: %s not answering after %v (%v)\n%s", name, url, limit, err, ls.logTail(name))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// scrape fetches a Prometheus target (compose address) and parses it.
func (ls *localStack) scrape(target string) (map[string]float64, error) {
	a, ok := ls.addr[target]
	if !ok {
		return nil, fmt.Errorf("no local address for %s", target)
	}
	resp, err := http.Get("http://" + a + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parsing /metrics: %w", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			out[name+"{"+strings.Join(ls, ",")+"}"] += v
			out[name] += v
		}
	}
	return out, nil
}

// knownGaps are metrics the dashboards use that a process does not serve
// yet, with the reason. The check below fails if one of them appears, so an
// entry cannot outlive its fix.
var knownGaps = map[string]string{}

// checkScrapeTargets scrapes every Prometheus target of a Loanflow process:
// each answers, each loanflow_* family it serves is one the Go sources
// define (so the static dashboard check sees what processes export), and
// each unlabelled metric a dashboard or rule uses is served (it exists from
// the start) by the process its name belongs to (loanflow_<service>_*).
func (ls *localStack) checkScrapeTargets() {
	t := ls.t
	defs := goMetrics(t, repoRoot(t))
	served := map[string]map[string]bool{} // service → families
	defer func() { ls.checkUnlabelledServed(defs, served) }()
	var pc promConfig
	readYAML(t, "prometheus/prometheus.yml", &pc)
	for _, sc := range pc.ScrapeConfigs {
		for _, s := range sc.StaticConfigs {
			for _, target := range s.Targets {
				if strings.HasPrefix(target, "localhost:") {
					continue
				}
				got, err := ls.scrape(target)
				if err != nil {
					t.Errorf("scraping %s: %v", target, err)
					continue
				}
				n := 0
				svc, _, _ := strings.Cut(target, ":")
				if served[svc] == nil {
					served[svc] = map[string]bool{}
				}
				for series := range got {
					name, _, _ := strings.Cut(series, "{")
					if !strings.HasPrefix(name, "loanflow_") {
						continue
					}
					n++
					served[svc][name] = true
					if baseMetric(name, defs) == "" {
						t.Errorf("%s serves %s, which the Go source scan does not find", target, name)
					}
				}
				if n == 0 {
					t.Errorf("%s serves no loanflow_* metrics", target)
				}
			}
		}
	}
}

// checkUnlabelledServed checks that every unlabelled metric the dashboards
// and rules use is served by its service.
func (ls *localStack) checkUnlabelledServed(defs map[string]metricDef, served map[string]map[string]bool) {
	t := ls.t
	used := map[string]bool{}
	for _, e := range append(ruleExprs(t), dashboardExprs(t)...) {
		checkExpr(e.expr, defs, used)
	}
	for _, name := range keys(used) {
		d := defs[name]
		svc := strings.SplitN(name, "_", 3)[1]
		fams, scraped := served[svc]
		if d.vec || !scraped {
			continue
		}
		have := fams[name] || fams[name+"_count"]
		switch reason, gap := knownGaps[name]; {
		case gap && have:
			t.Errorf("%s is now served by %s: remove it from knownGaps (%s)", name, svc, reason)
		case gap:
			t.Logf("known gap: %s not served by %s: %s", name, svc, reason)
		case !have:
			t.Errorf("%s (%s) is used by the dashboards or rules but %s does not serve it", name, d.where, svc)
		}
	}
}

// checkDataFlows writes a customer and its credit profile to PostgreSQL and
// waits until the CDC reader has committed changes and the
// cache-invalidation job has consumed them: the composed commands move data
// end to end.
func (ls *localStack) checkDataFlows() {
	t := ls.t
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, ls.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{
		`INSERT INTO customers (customer_id, name_ct, ssn_ct, ssn_index, ssn_index_key_version, credit_limit, risk_tier)
			VALUES ('deploy-c1', '\x01', '\x02', '\x03', 1, 10000, 'LOW')`,
		`INSERT INTO credit_profiles (customer_id, current_score, score_history) VALUES ('deploy-c1', 720, '[]')`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	waitMetric := func(target, series string) {
		for {
			got, err := ls.scrape(target)
			if err == nil && got[series] > 0 {
				t.Logf("%s: %s = %v", target, series, got[series])
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("%s: %s never rose above 0 (%v)\n%s", target, series, err, ls.logTail(strings.Split(target, ":")[0]))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	waitMetric("cdc:9110", "loanflow_cdc_changes_total")
	waitMetric("cache-invalidation:9101", "loanflow_engine_records_in_total")
}

// checkPrometheus runs a real Prometheus server with deploy/prometheus's
// config and rules (targets mapped here, 1s intervals) against the running
// processes: every target is up, engine series keep their Loanflow `job`
// label (honor_labels), every rule evaluates healthy, and every dashboard
// and rule query evaluates without error.
func (ls *localStack) checkPrometheus() {
	t := ls.t
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		msg := "prometheus server not found: apt-get install prometheus (or `make deps` as root)"
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Log("skipping the Prometheus check: " + msg)
		return
	}
	addr := freeAddr(t)
	cfgPath, targets := ls.localPrometheusConfig(addr)
	dir := filepath.Join(ls.dir, "prometheus")
	p := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	logf, err := os.Create(filepath.Join(ls.dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	p.Stdout, p.Stderr = logf, logf
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	pr := &proc{cmd: p, done: make(chan struct{})}
	go func() { pr.err = p.Wait(); logf.Close(); close(pr.done) }()
	ls.procs["prometheus"] = pr
	base := "http://" + addr
	ls.waitURL("prometheus", base+"/-/ready", time.Minute)

	ls.waitQuery(base, "count(up == 1)", float64(targets))
	ls.waitQuery(base, `count(loanflow_engine_records_in_total{job="cache-invalidation"})`, -1)
	if v := ls.query(base, `count(loanflow_engine_records_in_total{exported_job!=""})`); len(v) != 0 {
		t.Errorf("engine series were relabelled exported_job: honor_labels is not in effect (%v)", v)
	}
	ls.waitRulesHealthy(base)
	for _, e := range append(ruleExprs(t), dashboardExprs(t)...) {
		if _, err := ls.queryErr(base, e.expr); err != nil {
			t.Errorf("%s: Prometheus cannot evaluate it: %v\n    %s", e.where, err, e.expr)
		}
	}
	// Liveness panels select scrape jobs by name: each must find its targets.
	for _, e := range dashboardExprs(t) {
		if strings.HasPrefix(e.expr, "up{") {
			if v := ls.query(base, e.expr); len(v) == 0 {
				t.Errorf("%s: no targets match (scrape job names in prometheus.yml?)\n    %s", e.where, e.expr)
			}
		}
	}
}

// localPrometheusConfig writes prometheus.yml with 1s intervals, targets
// mapped to the local processes (and to self at addr) and absolute rule
// paths; it returns the path and the number of targets.
func (ls *localStack) localPrometheusConfig(self string) (string, int) {
	src := filepath.Join(repoRoot(ls.t), "deploy", "prometheus")
	b, err := os.ReadFile(filepath.Join(src, "prometheus.yml"))
	if err != nil {
		ls.t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		ls.t.Fatal(err)
	}
	g := cfg["global"].(map[string]any)
	g["scrape_interval"], g["evaluation_interval"], g["scrape_timeout"] = "1s", "1s", "1s"
	rules := cfg["rule_files"].([]any)
	for i, r := range rules {
		rules[i] = filepath.Join(src, r.(string))
	}
	n := 0
	for _, sc := range cfg["scrape_configs"].([]any) {
		for _, s := range sc.(map[string]any)["static_configs"].([]any) {
			ts := s.(map[string]any)["targets"].([]any)
			for i, target := range ts {
				if a, ok := ls.addr[target.(string)]; ok {
					ts[i] = a
				} else if strings.HasPrefix(target.(string), "localhost:") {
					ts[i] = self
				} else {
					ls.t.Errorf("prometheus target %v has no local process", target)
				}
				n++
			}
		}
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		ls.t.Fatal(err)
	}
	p := filepath.Join(ls.dir, "prometheus.yml")
	if err := os.WriteFile(p, out, 0o600); err != nil {
		ls.t.Fatal(err)
	}
	return p, n
}

// promResult is a Prometheus HTTP API answer.
type promResult struct {
	Status    string `json:"status"`
	Error     string `json:"error"`
	ErrorType string `json:"errorType"`
	Data      struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"data"`
}

func (ls *localStack) get(u string) (promResult, error) {
	var r promResult
	resp, err := http.Get(u)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return r, fmt.Errorf("decoding %s: %w", u, err)
	}
	if r.Status != "success" {
		return r, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	return r, nil
}

func (ls *localStack) queryErr(base, q string) ([]float64, error) {
	r, err := ls.get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	var out []float64
	for _, s := range r.Data.Result {
		if v, ok := s.Value[1].(string); ok {
			f, _ := strconv.ParseFloat(v, 64)
			out = append(out, f)
		}
	}
	return out, nil
}

func (ls *localStack) query(base, q string) []float64 {
	v, err := ls.queryErr(base, q)
	if err != nil {
		ls.t.Fatalf("query %s: %v", q, err)
	}
	return v
}

// waitQuery waits until q returns one sample equal to want (any value if
// want < 0).
func (ls *localStack) waitQuery(base, q string, want float64) {
	deadline := time.Now().Add(time.Minute)
	var last []float64
	for time.Now().Before(deadline) {
		last = ls.query(base, q)
		if len(last) == 1 && (want < 0 || last[0] == want) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	ls.t.Fatalf("Prometheus: %s = %v, want %v\n%s", q, last, want, ls.logTail("prometheus"))
}

// waitRulesHealthy waits until every rule has been evaluated without error.
func (ls *localStack) waitRulesHealthy(base string) {
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := ls.get(base + "/api/v1/rules")
		if err != nil {
			ls.t.Fatal(err)
		}
		var bad []string
		n := 0
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				n++
				if rule.Health != "ok" {
					bad = append(bad, fmt.Sprintf("%s: %s %s", rule.Name, rule.Health, rule.LastError))
				}
			}
		}
		if n > 0 && len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			ls.t.Fatalf("Prometheus rules not healthy (%d rules): %v", n, bad)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
