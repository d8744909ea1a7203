package deploy_test

import (
	"context"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// healthcheckBin is where the Dockerfile installs deploy/cmd/healthcheck.
const healthcheckBin = "/usr/local/bin/healthcheck"

// loadCompose loads docker-compose.yml with the Compose specification's own
// loader (what `docker compose config` runs): schema validation,
// interpolation of ${VAR:-default} with an empty environment, merge keys,
// and the consistency checks (depends_on, volumes and networks exist).
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithEnv([]string{}), cli.WithName("loanflow"),
		cli.WithResolvedPaths(true), cli.WithConsistency(true), cli.WithInterpolation(true))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

// isLoanflow reports whether s runs the Loanflow image built from the
// repository.
func isLoanflow(root string, s types.ServiceConfig) bool {
	return s.Build != nil && filepath.Clean(s.Build.Context) == root
}

func oneShot(s types.ServiceConfig) bool { return s.Restart == "no" }

func sortedServices(p *types.Project) []types.ServiceConfig {
	var out []types.ServiceConfig
	for _, s := range p.Services {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// TestComposeShape checks the stack's structure: the services DESIGN.md §7
// names, one Loanflow image, healthchecks on everything long-running,
// depends_on conditions that can be met, bind mounts that exist, host ports
// on loopback only.
func TestComposeShape(t *testing.T) {
	p := loadCompose(t)
	root := repoRoot(t)
	for _, name := range []string{"kafka", "schema-registry", "postgres", "redis", "prometheus", "grafana",
		"keys-init", "api", "cdc", "bureau", "decisions", "cache-invalidation", "portfolio"} {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("service %s is missing", name)
		}
	}
	images := map[string]bool{}
	for _, s := range sortedServices(p) {
		if isLoanflow(root, s) {
			images[s.Image] = true
			if s.Build.Dockerfile != "Dockerfile" {
				t.Errorf("%s: builds %s, want the repository's Dockerfile", s.Name, s.Build.Dockerfile)
			}
		}
		if !oneShot(s) && (s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 || s.HealthCheck.Disable) {
			t.Errorf("%s: long-running service without a healthcheck", s.Name)
		}
		for dep, d := range s.DependsOn {
			target := p.Services[dep]
			switch d.Condition {
			case types.ServiceConditionHealthy:
				if target.HealthCheck == nil {
					t.Errorf("%s waits for %s to be healthy, but %s has no healthcheck", s.Name, dep, dep)
				}
			case types.ServiceConditionCompletedSuccessfully:
				if !oneShot(target) {
					t.Errorf("%s waits for %s to complete, but %s restarts (restart: %q)", s.Name, dep, dep, target.Restart)
				}
			default:
				t.Errorf("%s depends on %s with condition %q: use service_healthy or service_completed_successfully", s.Name, dep, d.Condition)
			}
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s: bind mount source %s: %v", s.Name, v.Source, err)
				}
			}
		}
		for _, port := range s.Ports {
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s: port %d published on %q; bind host ports to 127.0.0.1", s.Name, port.Target, port.HostIP)
			}
		}
	}
	if len(images) != 1 {
		t.Errorf("Loanflow services use images %v; want one image for every process", keys(images))
	}
	for _, s := range sortedServices(p) {
		if oneShot(s) && !dependedOn(p, s.Name) {
			t.Errorf("one-shot service %s: nothing waits for it (service_completed_successfully)", s.Name)
		}
	}
}

func dependedOn(p *types.Project, name string) bool {
	for _, s := range p.Services {
		if d, ok := s.DependsOn[name]; ok && d.Condition == types.ServiceConditionCompletedSuccessfully {
			return true
		}
	}
	return false
}

// TestComposeLoanflowCommands checks every Loanflow service's command
// against the binary built by the Dockerfile: each verb exists, each flag
// is one of the verb's flags, the whole command line parses (cobra parses
// every flag and value before it honours --help), positional arguments are
// real job names, and each environment variable is one the verb reads.
func TestComposeLoanflowCommands(t *testing.T) {
	p := loadCompose(t)
	bin := loanflowBin(t)
	root := repoRoot(t)
	jobs := jobNames(t, bin)
	for _, s := range sortedServices(p) {
		if !isLoanflow(root, s) {
			continue
		}
		t.Run(s.Name, func(t *testing.T) {
			cmd := parseCommand(t, bin, s.Command)
			switch strings.Join(cmd.path, " ") {
			case "job run":
				if len(cmd.args) != 1 || !jobs[cmd.args[0]] {
					t.Errorf("job run %v: want one job name of `loanflow job list` %v", cmd.args, keys(jobs))
				}
			default:
				if len(cmd.args) != 0 {
					t.Errorf("%v: unexpected arguments %v", cmd.path, cmd.args)
				}
			}
			out, err := exec.Command(bin, append(append([]string(nil), s.Command...), "--help")...).CombinedOutput()
			if err != nil {
				t.Errorf("loanflow %s --help: the command line does not parse: %v\n%s", strings.Join(s.Command, " "), err, out)
			}
			for name := range s.Environment {
				if _, ok := knownEnv[name]; ok {
					continue
				}
				if !strings.Contains(cmd.help.text, "env "+name) {
					t.Errorf("environment %s: `loanflow %s` does not read it (its --help names no \"env %s\")", name, strings.Join(cmd.path, " "), name)
				}
			}
		})
	}
}

// knownEnv are environment variables read by libraries, not by flags.
var knownEnv = map[string]string{
	"PGPASSWORD": "pgx (jackc/pgx/v5/pgconn) takes the PostgreSQL password from it",
}

// loanflowCmd is a parsed Loanflow command line.
type loanflowCmd struct {
	path  []string          // verbs, e.g. [job run]
	flags map[string]string // --flag → value ("" for booleans)
	args  []string          // positional arguments
	help  cmdHelp
}

// parseCommand resolves the verbs of words with the binary's help and
// splits the rest into known flags and positional arguments.
func parseCommand(t *testing.T, bin string, words []string) loanflowCmd {
	t.Helper()
	var c loanflowCmd
	i := 0
	for {
		c.help = help(t, bin, c.path...)
		if i < len(words) && c.help.subcommands[words[i]] {
			c.path = append(c.path, words[i])
			i++
			continue
		}
		break
	}
	if strings.Join(c.help.path, " ") != strings.Join(c.path, " ") || !c.help.runnable {
		t.Fatalf("%q: `loanflow %s` is not a runnable verb (help says %q)", words, strings.Join(c.path, " "), c.help.path)
	}
	c.flags = map[string]string{}
	for ; i < len(words); i++ {
		w := words[i]
		if !strings.HasPrefix(w, "--") {
			c.args = append(c.args, w)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(w, "--"), "=")
		takes, ok := c.help.flags[name]
		if !ok {
			t.Errorf("loanflow %s has no flag --%s", strings.Join(c.path, " "), name)
			continue
		}
		if takes && !hasVal && i+1 < len(words) {
			i++
			val = words[i]
		}
		c.flags[name] = val
	}
	return c
}

// jobNames are the jobs `loanflow job list` prints.
func jobNames(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, "job", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("loanflow job list: %v\n%s", err, out)
	}
	names := map[string]bool{}
	for i, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); i > 0 && len(f) > 0 {
			names[f[0]] = true
		}
	}
	return names
}

// endpoint is a host:port a process listens on or connects to.
type endpoint struct{ host, port string }

func (e endpoint) String() string { return net.JoinHostPort(e.host, e.port) }

func hostPort(t *testing.T, what, s string) endpoint {
	t.Helper()
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("%s: %q: %v", what, s, err)
		}
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443", "postgres": "5432", "redis": "6379"}[u.Scheme]
		}
		return endpoint{u.Hostname(), port}
	}
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatalf("%s: %q is not host:port: %v", what, s, err)
	}
	return endpoint{h, p}
}

// listenFlags are the Loanflow flags that set a listen address.
var listenFlags = []string{"addr", "metrics-addr", "admin-addr", "listen"}

// imageListeners are the ports the infrastructure images listen on by
// default (postgres, redis, prometheus, grafana) or as configured in their
// environment (kafka, schema-registry; parsed below).
var imageListeners = map[string][]string{
	"postgres": {"5432"}, "redis": {"6379"}, "prometheus": {"9090"}, "grafana": {"3000"},
}

// stack is the loaded compose project with each service's listen ports and
// parsed Loanflow commands.
type stack struct {
	p      *types.Project
	listen map[string]map[string]bool // service → ports
	cmds   map[string]loanflowCmd     // Loanflow services
}

func loadStack(t *testing.T) stack {
	t.Helper()
	p := loadCompose(t)
	root := repoRoot(t)
	bin := loanflowBin(t)
	st := stack{p: p, listen: map[string]map[string]bool{}, cmds: map[string]loanflowCmd{}}
	add := func(svc, port string) {
		if st.listen[svc] == nil {
			st.listen[svc] = map[string]bool{}
		}
		st.listen[svc][port] = true
	}
	for _, s := range sortedServices(p) {
		for _, port := range imageListeners[s.Name] {
			add(s.Name, port)
		}
		if !isLoanflow(root, s) {
			continue
		}
		c := parseCommand(t, bin, s.Command)
		st.cmds[s.Name] = c
		for _, f := range listenFlags {
			if v, ok := c.flags[f]; ok {
				add(s.Name, hostPort(t, s.Name+" --"+f, v).port)
			}
		}
	}
	kafka := p.Services["kafka"]
	for _, l := range strings.Split(env(kafka, "KAFKA_LISTENERS"), ",") {
		_, hp, _ := strings.Cut(l, "://")
		add("kafka", hostPort(t, "KAFKA_LISTENERS", hp).port)
	}
	add("schema-registry", hostPort(t, "SCHEMA_REGISTRY_LISTENERS", env(p.Services["schema-registry"], "SCHEMA_REGISTRY_LISTENERS")).port)
	return st
}

func env(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

// reaches checks that e names a service of the stack and one of its ports.
func (st stack) reaches(t *testing.T, what string, e endpoint) {
	t.Helper()
	svc := e.host
	if _, ok := st.p.Services[svc]; !ok {
		for _, s := range st.p.Services {
			if s.Hostname == e.host {
				svc = s.Name
			}
		}
	}
	if _, ok := st.p.Services[svc]; !ok {
		t.Errorf("%s: %s is no service of docker-compose.yml", what, e)
		return
	}
	if !st.listen[svc][e.port] {
		t.Errorf("%s: %s, but %s listens on %v", what, e, svc, keys(st.listen[svc]))
	}
}

var bootstrapRE = regexp.MustCompile(`--bootstrap-server\s+(\S+)`)

// TestComposeAddresses checks that every address one part gives for another
// is where that other part listens: Loanflow flags and environment, the
// CDC config, Kafka's advertised listeners, the schema registry's store,
// kafka-init, healthchecks, published ports, and the Grafana datasource.
func TestComposeAddresses(t *testing.T) {
	st := loadStack(t)
	for name, c := range st.cmds {
		for _, f := range []string{"brokers", "pipeline-metrics-urls"} {
			for _, v := range splitComma(c.flags[f]) {
				st.reaches(t, name+" --"+f, hostPort(t, name, v))
			}
		}
		for _, f := range []string{"schema-registry", "redis-url", "bureau-url"} {
			if v, ok := c.flags[f]; ok {
				st.reaches(t, name+" --"+f, hostPort(t, name, v))
			}
		}
		if v := env(st.p.Services[name], "DATABASE_URL"); v != "" {
			st.reaches(t, name+" DATABASE_URL", hostPort(t, name, v))
		}
	}
	cfg := loadCDCConfig(t)
	for _, b := range cfg.Brokers {
		st.reaches(t, "cdc.yaml brokers", hostPort(t, "cdc.yaml", b))
	}
	st.reaches(t, "cdc.yaml schema_registry_url", hostPort(t, "cdc.yaml", cfg.SchemaRegistryURL))
	st.reaches(t, "cdc.yaml database_url", hostPort(t, "cdc.yaml", cfg.DatabaseURL))

	for _, l := range strings.Split(env(st.p.Services["kafka"], "KAFKA_ADVERTISED_LISTENERS"), ",") {
		_, hp, _ := strings.Cut(l, "://")
		if e := hostPort(t, "KAFKA_ADVERTISED_LISTENERS", hp); e.host != "localhost" {
			st.reaches(t, "kafka advertised listener", e)
		}
	}
	_, store, _ := strings.Cut(env(st.p.Services["schema-registry"], "SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"), "://")
	st.reaches(t, "schema registry kafkastore", hostPort(t, "schema-registry", store))
	init := strings.Join(st.p.Services["kafka-init"].Command, " ")
	ms := bootstrapRE.FindAllStringSubmatch(init, -1)
	if len(ms) == 0 {
		t.Error("kafka-init: no --bootstrap-server")
	}
	for _, m := range ms {
		st.reaches(t, "kafka-init --bootstrap-server", hostPort(t, "kafka-init", m[1]))
	}

	var ds struct {
		Datasources []struct{ UID, URL string } `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yml", &ds)
	for _, d := range ds.Datasources {
		st.reaches(t, "grafana datasource "+d.UID, hostPort(t, "datasource", d.URL))
	}

	for _, s := range sortedServices(st.p) {
		for _, port := range s.Ports {
			if ls, ok := st.listen[s.Name]; ok && !ls[strconv.Itoa(int(port.Target))] {
				t.Errorf("%s publishes container port %d, but listens on %v", s.Name, port.Target, keys(ls))
			}
		}
	}
}

// TestComposeHealthchecks checks that each Loanflow healthcheck probes,
// with the image's healthcheck binary, a port the process listens on and a
// path the code serves.
func TestComposeHealthchecks(t *testing.T) {
	st := loadStack(t)
	routes := servedRoutes(t)
	for name := range st.cmds {
		s := st.p.Services[name]
		if oneShot(s) {
			continue
		}
		test := s.HealthCheck.Test
		if len(test) != 3 || test[0] != "CMD" || test[1] != healthcheckBin {
			t.Errorf("%s: healthcheck %q: want [CMD %s URL]", name, test, healthcheckBin)
			continue
		}
		u, err := url.Parse(test[2])
		if err != nil {
			t.Errorf("%s: healthcheck URL %q: %v", name, test[2], err)
			continue
		}
		if h := u.Hostname(); h != "127.0.0.1" && h != "localhost" {
			t.Errorf("%s: healthcheck probes %s; probe the container itself (127.0.0.1)", name, h)
		}
		if !st.listen[name][u.Port()] {
			t.Errorf("%s: healthcheck probes port %s, but the process listens on %v", name, u.Port(), keys(st.listen[name]))
		}
		if !routes[u.Path] {
			t.Errorf("%s: healthcheck path %s is not a GET route registered in the Go sources", name, u.Path)
		}
	}
}

var getRouteRE = regexp.MustCompile(`"GET (/[^"\s]*)"`)

// servedRoutes are the paths registered as "GET /path" patterns in the
// non-test Go sources.
func servedRoutes(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	root := repoRoot(t)
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range getRouteRE.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestComposePartitions checks that the parts that create topics agree on
// the partition count: kafka-init, the CDC reader and the workers.
func TestComposePartitions(t *testing.T) {
	st := loadStack(t)
	cfg := loadCDCConfig(t)
	want := strconv.Itoa(cfg.TopicPartitions)
	for name, c := range st.cmds {
		if strings.Join(c.path, " ") != "job run" {
			continue
		}
		if got := c.flags["default-partitions"]; got != want {
			t.Errorf("%s: --default-partitions %q, cdc.yaml topic_partitions %s", name, got, want)
		}
	}
	init := strings.Join(st.p.Services["kafka-init"].Command, " ")
	ms := regexp.MustCompile(`--partitions\s+(\d+)`).FindAllStringSubmatch(init, -1)
	if len(ms) == 0 {
		t.Error("kafka-init creates no topics with --partitions")
	}
	for _, m := range ms {
		if m[1] != want {
			t.Errorf("kafka-init: --partitions %s, cdc.yaml topic_partitions %s", m[1], want)
		}
	}
	if got := env(st.p.Services["kafka"], "KAFKA_NUM_PARTITIONS"); got != want {
		t.Errorf("kafka: KAFKA_NUM_PARTITIONS %q, cdc.yaml topic_partitions %s", got, want)
	}
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func readYAML(t *testing.T, rel string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", rel))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("deploy/%s: %v", rel, err)
	}
}

// TestComposeAPIRunsAsLeastPrivilegedRole (issue 9, High 4): the API
// connects as a role that is not the schema owner (POSTGRES_USER), the
// migrate one-shot creates that role in loanflow_api as the owner before the
// API starts, and the API neither migrates nor holds the owner's password.
// `loanflow db migrate --api-role` itself is tested against PostgreSQL in
// cmd/loanflow (TestDBMigrateCreatesTheAPIRole).
func TestComposeAPIRunsAsLeastPrivilegedRole(t *testing.T) {
	p := loadCompose(t)
	owner := p.Services["postgres"].Environment["POSTGRES_USER"]
	if owner == nil {
		t.Fatal("postgres has no POSTGRES_USER")
	}
	api := p.Services["api"]
	dsn := api.Environment["DATABASE_URL"]
	if dsn == nil {
		t.Fatal("api has no DATABASE_URL")
	}
	u, err := url.Parse(*dsn)
	if err != nil || u.User == nil {
		t.Fatalf("api DATABASE_URL %q: %v", *dsn, err)
	}
	role := u.User.Username()
	if role == *owner || role == "postgres" {
		t.Fatalf("the API connects as %s, the schema owner", role)
	}
	if pw := api.Environment["PGPASSWORD"]; pw == nil || *pw == *p.Services["postgres"].Environment["POSTGRES_PASSWORD"] {
		t.Errorf("the API's PGPASSWORD must be its role's, not the owner's: %v", pw)
	}
	if _, ok := api.Environment["MIGRATIONS_DATABASE_URL"]; ok {
		t.Error("the API holds the owner's DSN (MIGRATIONS_DATABASE_URL)")
	}
	cmd := strings.Join(api.Command, " ")
	if !strings.Contains(cmd, "--migrate=false") || strings.Contains(cmd, "--migrations-database-url") {
		t.Errorf("api command %q: want --migrate=false and no owner DSN", cmd)
	}
	m, ok := p.Services["migrate"]
	if !ok {
		t.Fatal("no migrate service")
	}
	if got := strings.Join(m.Command, " "); got != "db migrate --api-role "+role {
		t.Errorf("migrate command %q, want db migrate --api-role %s", got, role)
	}
	mu, err := url.Parse(*m.Environment["DATABASE_URL"])
	if err != nil || mu.User == nil || mu.User.Username() != *owner {
		t.Errorf("migrate runs as %v, want the owner %s", mu, *owner)
	}
	if d, ok := api.DependsOn["migrate"]; !ok || d.Condition != types.ServiceConditionCompletedSuccessfully {
		t.Errorf("api depends on migrate: %+v", d)
	}
}
