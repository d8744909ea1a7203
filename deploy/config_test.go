package deploy_test

import (
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/loanflow/loanflow/connectors/postgres"
	"github.com/loanflow/loanflow/schemas"
)

// imageSchemaDir is where the Dockerfile puts schemas/avro.
const imageSchemaDir = "/usr/share/loanflow/schemas/avro"

// loadCDCConfig loads deploy/config/cdc.yaml with the reader's own loader
// (unknown keys are errors), with image paths mapped to the repository.
func loadCDCConfig(t *testing.T) postgres.Config {
	t.Helper()
	root := repoRoot(t)
	cfg, err := postgres.LoadConfig(filepath.Join(root, "deploy", "config", "cdc.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Views {
		v := &cfg.Views[i]
		if rel, ok := strings.CutPrefix(v.ValueSchemaFile, imageSchemaDir+"/"); ok {
			v.ValueSchemaFile = filepath.Join(root, "schemas", "avro", rel)
		} else if v.ValueSchemaFile != "" {
			t.Errorf("view %s: value_schema_file %s is outside %s, where the image has the schemas", v.Topic, v.ValueSchemaFile, imageSchemaDir)
		}
	}
	return cfg.WithDefaults()
}

// TestCDCConfig validates deploy/config/cdc.yaml as `loanflow cdc run`
// does, and checks it captures what the jobs read: the four tables and the
// customer_360 view, identical to postgres.Customer360View().
func TestCDCConfig(t *testing.T) {
	cfg := loadCDCConfig(t)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("cdc.yaml: %v", err)
	}
	if _, err := postgres.NewReader(cfg); err != nil {
		t.Fatalf("cdc.yaml: NewReader: %v", err)
	}
	tables := map[string]bool{}
	for _, tc := range cfg.Tables {
		tables[tc.Table] = true
		if tc.Mode != postgres.ModeEnvelope || tc.Topic != "cdc."+tc.Table {
			t.Errorf("table %s: mode %s topic %s; the jobs read envelopes on cdc.<schema>.<table>", tc.Table, tc.Mode, tc.Topic)
		}
	}
	for _, want := range []string{"public.customers", "public.credit_profiles", "public.loans"} {
		if !tables[want] {
			t.Errorf("cdc.yaml does not capture %s", want)
		}
	}
	// The same tables, column allow-lists and truncate settings as
	// `loanflow dev` (whose PII-free output connectors/postgres
	// TestShippedTablesSendNoPII checks against the API's schema).
	shipped := postgres.Config{Tables: postgres.LoanflowTables()}.WithDefaults().Tables
	if len(shipped) != len(cfg.Tables) {
		t.Errorf("cdc.yaml tables %+v, want postgres.LoanflowTables() %+v", cfg.Tables, shipped)
	}
	for i := range min(len(shipped), len(cfg.Tables)) {
		got, want := cfg.Tables[i], shipped[i]
		if got.Table != want.Table || !slices.Equal(got.Columns, want.Columns) || !slices.Equal(got.ExcludeColumns, want.ExcludeColumns) ||
			got.Truncate != want.Truncate || len(cfg.IncludeTables) > 0 {
			t.Errorf("cdc.yaml table %d: %+v, want postgres.LoanflowTables()'s %+v", i, got, want)
		}
	}
	if tables["public.audit_log"] {
		t.Error("cdc.yaml ships the audit log to Kafka (issue 9: not unless asked)")
	}
	if !cfg.EnsureReplicaIdentityFull {
		t.Error("ensure_replica_identity_full is off: the API's tables have TOAST-able columns and the reader refuses them")
	}
	if len(cfg.Views) != 1 {
		t.Fatalf("cdc.yaml has %d views, want customer_360", len(cfg.Views))
	}
	got, want := cfg.Views[0], postgres.Customer360View()
	if got.Topic != want.Topic || got.KeyColumn != want.KeyColumn {
		t.Errorf("view: topic %s key %s, want %s %s", got.Topic, got.KeyColumn, want.Topic, want.KeyColumn)
	}
	if norm(got.Query) != norm(want.Query) {
		t.Errorf("view query differs from postgres.Customer360Query:\n got: %s\nwant: %s", norm(got.Query), norm(want.Query))
	}
	if len(got.Sources) != len(want.Sources) {
		t.Errorf("view sources %v, want %v", got.Sources, want.Sources)
	}
	for i := range want.Sources {
		if i < len(got.Sources) && got.Sources[i] != want.Sources[i] {
			t.Errorf("view source %d: %v, want %v", i, got.Sources[i], want.Sources[i])
		}
	}
	b, err := os.ReadFile(got.ValueSchemaFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != schemas.Customer360Schema {
		t.Errorf("%s is not schemas.Customer360Schema", got.ValueSchemaFile)
	}
	if cfg.MetricsAddr != "" {
		t.Errorf("metrics_addr %q in cdc.yaml: docker-compose.yml sets --metrics-addr; keep one source", cfg.MetricsAddr)
	}
}

// TestComposeMountsCDCConfig checks that the cdc service reads the file
// tested above, at the path its --config names.
func TestComposeMountsCDCConfig(t *testing.T) {
	p := loadCompose(t)
	cdc := p.Services["cdc"]
	cfgPath := ""
	for i, w := range cdc.Command {
		if w == "--config" && i+1 < len(cdc.Command) {
			cfgPath = cdc.Command[i+1]
		}
	}
	want := filepath.Join(repoRoot(t), "deploy", "config", "cdc.yaml")
	found := false
	for _, v := range cdc.Volumes {
		if v.Target == cfgPath {
			found = true
			if v.Source != want || !v.ReadOnly {
				t.Errorf("cdc: %s is mounted from %s (read-only %v), want %s read-only", cfgPath, v.Source, v.ReadOnly, want)
			}
		}
	}
	if !found {
		t.Errorf("cdc: --config %q is not mounted from deploy/config/cdc.yaml", cfgPath)
	}
}

func norm(s string) string { return strings.Join(strings.Fields(s), " ") }

var goDirectiveRE = regexp.MustCompile(`(?m)^go (\d+\.\d+)`)

// TestDockerfile checks the image recipe: the Go version of go.mod, a
// static build (CGO off), a non-root distroless runtime with the loanflow
// entrypoint, the healthcheck binary where compose runs it, the schemas
// where cdc.yaml reads them, and a .dockerignore that keeps what the build
// needs.
func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	lines := dockerfile(t)
	all := strings.Join(lines, "\n")
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVer := goDirectiveRE.FindStringSubmatch(string(gomod))
	if goVer == nil || !strings.Contains(all, "ARG GO_VERSION="+goVer[1]) || !strings.Contains(all, "FROM golang:${GO_VERSION}") {
		t.Errorf("Dockerfile: want `ARG GO_VERSION=%v` and `FROM golang:${GO_VERSION}...` (go.mod's go version)", goVer)
	}
	if !strings.Contains(all, "CGO_ENABLED=0") {
		t.Error("Dockerfile: the build must set CGO_ENABLED=0 (static binary for distroless/static)")
	}
	var final []string
	for _, l := range lines {
		if strings.HasPrefix(l, "FROM ") {
			final = nil
		}
		final = append(final, l)
	}
	stage := strings.Join(final, "\n")
	for _, want := range []string{"FROM gcr.io/distroless/static", "USER nonroot", `ENTRYPOINT ["/usr/local/bin/loanflow"]`,
		"COPY schemas/avro " + imageSchemaDir, path.Dir(healthcheckBin) + "/"} {
		if !strings.Contains(stage, want) {
			t.Errorf("Dockerfile runtime stage lacks %q", want)
		}
	}
	builds := map[string]string{}
	for _, bl := range dockerBuildLines(t) {
		builds[bl.pkg] = path.Base(bl.out)
	}
	if builds["./cmd/loanflow"] != "loanflow" || builds["./deploy/cmd/healthcheck"] != path.Base(healthcheckBin) {
		t.Errorf("Dockerfile builds %v; want ./cmd/loanflow → loanflow and ./deploy/cmd/healthcheck → %s", builds, path.Base(healthcheckBin))
	}
	checkDockerignore(t, root)
}

// checkDockerignore fails if .dockerignore excludes a file the build needs.
func checkDockerignore(t *testing.T, root string) {
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	needed := []string{"go.mod", "go.sum", "cmd/loanflow/main.go", "deploy/cmd/healthcheck/main.go",
		"deploy/config/cdc.yaml", "schemas/avro/customer_360.avsc", "api/migrations", "api/web"}
	for _, l := range strings.Split(string(b), "\n") {
		pat := strings.TrimSuffix(strings.TrimSpace(l), "/")
		if pat == "" || strings.HasPrefix(pat, "#") || strings.HasPrefix(pat, "!") {
			continue
		}
		for _, n := range needed {
			if ignores(pat, n) {
				t.Errorf(".dockerignore: %q excludes %s, which the image build needs", pat, n)
			}
		}
	}
}

// ignores reports whether a .dockerignore pattern matches p or a parent.
func ignores(pat, p string) bool {
	parts := strings.Split(p, "/")
	for i := 1; i <= len(parts); i++ {
		prefix := strings.Join(parts[:i], "/")
		if ok, _ := path.Match(pat, prefix); ok {
			return true
		}
		if rest, ok := strings.CutPrefix(pat, "**/"); ok {
			if ok, _ := path.Match(rest, parts[i-1]); ok {
				return true
			}
		}
	}
	return false
}

// TestCDCExampleConfig checks that the config `loanflow cdc example-config`
// prints, which users start from, loads and validates with the reader's
// own code.
func TestCDCExampleConfig(t *testing.T) {
	out, err := exec.Command(loanflowBin(t), "cdc", "example-config").Output()
	if err != nil {
		t.Fatalf("loanflow cdc example-config: %v", err)
	}
	p := filepath.Join(t.TempDir(), "cdc.yaml")
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := postgres.LoadConfig(p)
	if err != nil {
		t.Fatalf("the example config does not load: %v\n%s", err, out)
	}
	if err := cfg.WithDefaults().Validate(); err != nil {
		t.Fatalf("the example config does not validate: %v\n%s", err, out)
	}
}
