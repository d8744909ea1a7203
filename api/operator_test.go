package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

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
// workers' last-checkpoint gauge and a running CDC reader's lag metrics
// from their /metrics endpoints and shows checkpoint age and replication
// lag; an unreachable endpoint is reported, not fatal.
func TestOperatorPageCheckpointsAndCDCLag(t *testing.T) {
	engineReg := prometheus.NewRegistry()
	em := pipeline.NewMetrics(engineReg)
	lastCkpt := time.Now().Add(-42 * time.Second)
	em.LastCheckpoint.WithLabelValues("decisions", "w-1").Set(float64(lastCkpt.UnixNano()) / 1e9)
	em.LastCheckpoint.WithLabelValues("portfolio", "w-2").Set(float64(time.Now().UnixNano()) / 1e9)
	cdcReg := prometheus.NewRegistry()
	urls := []string{serveRegistry(t, engineReg), serveRegistry(t, cdcReg), "http://127.0.0.1:1/metrics"}
	e := newEnv(t, func(c *Config) { c.OperatorMetricsURLs = urls })
	runCDC(t, e, cdcReg)

	var h Health
	waitFor(t, "CDC metrics with a recent commit", func() bool {
		h = Health{}
		e.do("GET", "/v1/admin/pipeline-health", e.admin, nil).json(t, &h)
		return len(h.CDC) == 1 && h.CDC[0].LastCommitAgeSeconds >= 0 && h.CDC[0].LastCommitAgeSeconds < 10
	})
	if len(h.Checkpoints) != 2 {
		t.Fatalf("checkpoints: %+v", h.Checkpoints)
	}
	if c := h.Checkpoints[0]; c.Job != "decisions" || c.Worker != "w-1" || c.AgeSeconds < 41 || c.AgeSeconds > 60 {
		t.Fatalf("decisions checkpoint: %+v", c)
	}
	if c := h.Checkpoints[1]; c.Job != "portfolio" || c.AgeSeconds > 20 {
		t.Fatalf("portfolio checkpoint: %+v", c)
	}
	if c := h.CDC[0]; c.Reader != "op_cdc" || c.SnapshotProgress != 1 || c.LagBytes < 0 || c.Source != urls[1] {
		t.Fatalf("cdc: %+v", c)
	}
	if h.Scraped[2].Error == "" {
		t.Fatalf("unreachable endpoint not reported: %+v", h.Scraped[2])
	}
	page := e.do("GET", "/operator", e.admin, nil)
	body := string(page.body)
	for _, want := range []string{`id="checkpoints"`, "decisions", "w-1", `id="cdc"`, "op_cdc", `class="lag-bytes"`, "unreachable"} {
		if !strings.Contains(body, want) {
			t.Errorf("operator page lacks %q", want)
		}
	}
	if page.status != http.StatusOK || t.Failed() {
		t.Fatalf("operator page: %d\n%s", page.status, body)
	}
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
