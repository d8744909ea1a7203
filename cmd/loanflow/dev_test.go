package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/devstack"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/schemas"
)

// requireServers skips (locally) or fails (CI) when the server binaries
// the local stack starts are missing.
func requireServers(t *testing.T) {
	t.Helper()
	_, pgErr := localsvc.PostgresBinDir()
	_, redisErr := localsvc.RedisBinary()
	if err := errors.Join(pgErr, redisErr); err != nil {
		if testenv.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// startDev runs the local stack in dir on free ports until the test ends
// or stop is called; stop waits for a clean shutdown.
func startDev(t *testing.T, dir string) (devstack.Info, func()) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(dir, "test.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan devstack.Info, 1)
	errc := make(chan error, 1)
	cfg := devstack.Config{Dir: dir, FreePorts: true, Logger: slog.New(slog.NewJSONHandler(logf, nil)),
		Bureau: bureau.Config{LatencyMin: 20 * time.Millisecond, LatencyMax: 200 * time.Millisecond}}
	go func() { errc <- devstack.Run(ctx, cfg, func(i devstack.Info) { ready <- i }) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("stack stopped with %v", err)
			}
		case <-time.After(2 * time.Minute):
			t.Error("stack did not stop within 2m")
		}
		logf.Close()
	}
	t.Cleanup(stop)
	select {
	case info := <-ready:
		return info, stop
	case err := <-errc:
		stopped = true
		t.Fatalf("stack failed to start: %v\n%s", err, tail(filepath.Join(dir, "test.log")))
	case <-time.After(4 * time.Minute):
		t.Fatalf("stack not ready after 4m\n%s", tail(filepath.Join(dir, "test.log")))
	}
	return devstack.Info{}, stop
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// TestDevStackAndDemo runs `loanflow dev`'s stack, the demo against it,
// stops it, and starts it again from the same directory.
func TestDevStackAndDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts every server and part of the system")
	}
	requireServers(t)
	dir := testenv.Dir(t, "dev")

	start := time.Now()
	info, stop := startDev(t, dir)
	t.Logf("stack ready in %s: %v", time.Since(start).Round(time.Millisecond), info.Started)
	if !strings.Contains(info.Summary(), info.APIURL+"/dashboard") {
		t.Errorf("summary lacks the dashboard:\n%s", info.Summary())
	}
	checkDemo(t, info)
	for _, j := range devstack.Jobs {
		body := get(t, "http://"+info.Workers[j]+"/metrics")
		if !strings.Contains(body, "loanflow_") {
			t.Errorf("job %s serves no loanflow metrics", j)
		}
	}
	if body := get(t, info.CDCMetricsURL); !strings.Contains(body, "loanflow_cdc_") {
		t.Error("the CDC reader serves no loanflow_cdc_ metrics")
	}
	stop()

	// Same directory: the stack resumes with its data and credentials.
	start = time.Now()
	again, _ := startDev(t, dir)
	t.Logf("stack restarted in %s", time.Since(start).Round(time.Millisecond))
	if again.Admin.ClientID != info.Admin.ClientID || again.Admin.ClientSecret != info.Admin.ClientSecret {
		t.Errorf("admin client after restart %+v, want %+v", again.Admin, info.Admin)
	}
	checkDemo(t, again)
}

func checkDemo(t *testing.T, info devstack.Info) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := runDemo(ctx, demoConfig{apiURL: info.APIURL, credentials: info.CredentialsFile, lender: "demo-bank", timeout: time.Minute}, &out)
	t.Logf("demo:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	if len(res) != 3 {
		t.Fatalf("%d decisions, want 3", len(res))
	}
	for _, r := range res {
		t.Logf("%s: %s (%s) waited %s, engine %d ms", r.Who, r.Decision.Decision, r.Decision.Basis, r.Latency, r.Decision.EngineLatencyMs)
	}
	if d := res[0].Decision; d.Decision != string(schemas.DecisionApproved) || d.Basis != string(schemas.BasisCustomer360) || d.Score != 780 {
		t.Errorf("known low-risk customer: %+v, want APPROVED on CUSTOMER_360 with score 780", d)
	}
	if d := res[1].Decision; d.Decision != string(schemas.DecisionDeclined) || d.Basis != string(schemas.BasisCustomer360) ||
		!slices.Contains(d.ReasonCodes, "LIMIT_EXCEEDED") || !slices.Contains(d.ReasonCodes, "SCORE_BELOW_MIN") {
		t.Errorf("known high-risk customer over the limit: %+v, want DECLINED on CUSTOMER_360 with LIMIT_EXCEEDED and SCORE_BELOW_MIN", d)
	}
	if d := res[2].Decision; d.Basis != string(schemas.BasisCreditBureau) && d.Basis != string(schemas.BasisFallback) {
		t.Errorf("new applicant: %+v, want a CREDIT_BUREAU (or FALLBACK) decision", d)
	}
	if !strings.Contains(out.String(), "APPROVED") {
		t.Errorf("demo output lacks the decisions:\n%s", out.String())
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}

// TestDevStackAddressTaken: a taken listen address stops the start with
// an error naming the flag, and the parts already started stop with it.
func TestDevStackAddressTaken(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the servers")
	}
	requireServers(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := devstack.Config{Dir: testenv.Dir(t, "dev-taken"), FreePorts: true, APIAddr: ln.Addr().String(),
		Logger: slog.New(slog.DiscardHandler)}
	errc := make(chan error, 1)
	go func() {
		errc <- devstack.Run(context.Background(), cfg, func(devstack.Info) { t.Error("stack reported ready") })
	}()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "--api-addr") {
			t.Fatalf("Run returned %v, want an error naming --api-addr", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("Run did not return after a failed start")
	}
}

// TestDevStackUnreachableDir: running as root, PostgreSQL runs as user
// postgres; a data directory it cannot enter is refused with the fix.
func TestDevStackUnreachableDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root hands PostgreSQL to another user")
	}
	requireServers(t)
	private := filepath.Join(testenv.Dir(t, "dev-private"), "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	err := devstack.Run(context.Background(), devstack.Config{Dir: filepath.Join(private, "dev"), FreePorts: true,
		Logger: slog.New(slog.DiscardHandler)}, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot enter "+private) || !strings.Contains(err.Error(), "--dir") {
		t.Fatalf("Run returned %v, want a refusal naming %s and --dir", err, private)
	}
}

// TestDevStackOnApacheKafka runs the real loanflow binary's `loanflow dev
// --brokers` against an Apache Kafka 4.4 broker (KRaft, one node), runs
// the demo against it, stops it and starts it again on the same directory
// and broker: every part (registry, API, CDC reader, the three jobs) runs
// on Apache Kafka and the demo decides its three applications both times.
func TestDevStackOnApacheKafka(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary, runs the whole stack on Apache Kafka")
	}
	requireServers(t)
	k := testenv.NewKafka(t, localsvc.KafkaOptions{})
	st := newBinaryStack(t, buildLoanflow(t), "dev-apache", k.Addrs())
	info := devstack.Info{APIURL: st.api, CredentialsFile: filepath.Join(st.dir, "admin-client.json")}
	for i := 1; i <= 2; i++ {
		start := time.Now()
		st.start(t)
		t.Logf("loanflow dev --brokers %s (start %d) ready in %s", strings.Join(k.Addrs(), ","), i, time.Since(start).Round(100*time.Millisecond))
		if out, _ := os.ReadFile(st.logPath(st.incarnation)); !strings.Contains(string(out), strings.Join(k.Addrs(), ",")) {
			t.Fatalf("loanflow dev does not report the Apache broker:\n%s", out)
		}
		checkDemo(t, info)
		st.stop(t)
		if !st.cmd.ProcessState.Success() {
			t.Errorf("loanflow dev (start %d) did not stop cleanly:\n%s", i, st.logTail())
		}
	}
	if _, err := os.Stat(filepath.Join(st.dir, "broker")); err == nil {
		t.Error("loanflow dev --brokers started an embedded broker too")
	}
	// An independent read_committed reader of the Apache broker: the two
	// demos' six applications, each decided once.
	decisions, err := readAllDecisions(k.Addrs(), time.Minute)
	if err != nil {
		t.Fatalf("reading loan_decisions on the Apache broker: %v", err)
	}
	once := 0
	for _, n := range decisions {
		if n == 1 {
			once++
		}
	}
	if len(decisions) != 6 || once != 6 {
		t.Errorf("loan_decisions on the Apache broker: %v, want 6 applications decided once each", decisions)
	}
}
