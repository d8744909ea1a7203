package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/devstack"
	"github.com/loanflow/loanflow/internal/devstack/devtest"
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

// startDev runs the local stack in dir (devtest.Start) with a bureau of
// 20-200 ms.
func startDev(t *testing.T, dir string) (devstack.Info, func()) {
	t.Helper()
	return devtest.Start(t, dir, bureau.Config{LatencyMin: 20 * time.Millisecond, LatencyMax: 200 * time.Millisecond})
}

func tail(path string) string { return devtest.Tail(path) }

// TestDevStackAndDemo runs `loanflow dev`'s stack, the demo against it,
// stops it, and starts it again from the same directory.
func TestDevStackAndDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts every server and part of the system")
	}
	requireServers(t)
	dir := testenv.Dir(t, "dev")

	if !devstack.FirstStart(dir) {
		t.Fatal("a fresh directory is not a first start")
	}
	start := time.Now()
	info, stop := startDev(t, dir)
	t.Logf("stack ready in %s: %v", time.Since(start).Round(time.Millisecond), info.Started)
	// Ready means ready: the API's /readyz (topics, schemas, the decisions
	// job owning its partitions) answers 200 when the banner would print.
	if body := get(t, info.APIURL+"/readyz"); !strings.Contains(body, `"pipeline":"ok"`) {
		t.Errorf("readyz at the banner: %s", body)
	}
	if devstack.FirstStart(dir) {
		t.Error("a started stack's directory still looks like a first start")
	}
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
	checkDecisionMetrics(t, info)
	checkDebugListeners(t, info)
	checkAdminCLI(t, info)
	checkJobCLI(t, info)
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

// checkDebugListeners: /debug/pprof on every admin listener, never on the
// public API.
func checkDebugListeners(t *testing.T, info devstack.Info) {
	t.Helper()
	for _, j := range devstack.Jobs {
		if body := get(t, "http://"+info.Workers[j]+"/debug/pprof/"); !strings.Contains(body, "goroutine") {
			t.Errorf("job %s: /debug/pprof/ lists no profiles", j)
		}
	}
	if body := get(t, strings.TrimSuffix(info.CDCMetricsURL, "/metrics")+"/debug/pprof/"); !strings.Contains(body, "goroutine") {
		t.Error("the CDC listener serves no /debug/pprof/")
	}
	resp, err := http.Get(info.APIURL + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Error("the public API serves /debug/pprof/")
	}
}

// checkAdminCLI creates, lists and revokes a client with loanflow admin;
// the revoked client's secret no longer gets a token (it did before).
func checkAdminCLI(t *testing.T, info devstack.Info) {
	t.Helper()
	conn := []string{"--api", info.APIURL, "--credentials", info.CredentialsFile}
	mk := func() *cobra.Command { return newAdminCmd() }
	out, err := run(t, mk, append([]string{"lenders", "create", "cli-bank", "--name", "CLI Bank"}, conn...)...)
	if err != nil {
		t.Fatalf("lenders create: %v\n%s", err, out)
	}
	out, err = run(t, mk, append([]string{"clients", "create", "cli-pos-1", "--lender", "cli-bank", "--output", "json"}, conn...)...)
	var creds api.ClientCredentials
	if err != nil || json.Unmarshal([]byte(out), &creds) != nil || creds.ClientSecret == "" {
		t.Fatalf("clients create: %v\n%s", err, out)
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	if _, err := login(context.Background(), hc, info.APIURL, creds.ClientID, creds.ClientSecret); err != nil {
		t.Fatalf("negative control: the new client gets no token: %v", err)
	}
	listed := func() []api.Client {
		out, err := run(t, mk, append([]string{"clients", "list", "--lender", "cli-bank", "--output", "json"}, conn...)...)
		var cs []api.Client
		if err != nil || json.Unmarshal([]byte(out), &cs) != nil {
			t.Fatalf("clients list: %v\n%s", err, out)
		}
		return cs
	}
	if cs := listed(); len(cs) != 1 || cs[0].ClientID != "cli-pos-1" || cs[0].Revoked {
		t.Fatalf("clients of cli-bank: %+v", cs)
	}
	if out, err := run(t, mk, append([]string{"clients", "revoke", "cli-pos-1"}, conn...)...); err != nil {
		t.Fatalf("clients revoke: %v\n%s", err, out)
	}
	if cs := listed(); len(cs) != 1 || !cs[0].Revoked {
		t.Fatalf("clients of cli-bank after the revoke: %+v", cs)
	}
	if _, err := login(context.Background(), hc, info.APIURL, creds.ClientID, creds.ClientSecret); err == nil {
		t.Fatal("a revoked client still gets a token")
	}
	if out, err := run(t, mk, append([]string{"clients", "revoke", "no-such-client"}, conn...)...); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("revoking an unknown client: %v\n%s", err, out)
	}
	out, err = run(t, mk, append([]string{"lenders", "list", "--output", "json"}, conn...)...)
	var ls []api.Lender
	if err != nil || json.Unmarshal([]byte(out), &ls) != nil {
		t.Fatalf("lenders list: %v\n%s", err, out)
	}
	i := slices.IndexFunc(ls, func(l api.Lender) bool { return l.LenderID == "cli-bank" })
	if i < 0 || ls[i].Clients != 0 || ls[i].RevokedClients != 1 {
		t.Fatalf("lenders: %+v", ls)
	}
}

// checkJobCLI finds the stack's workers by job name, then stops one job:
// the rest of the stack keeps running (the API stays ready, decisions
// stays healthy) and the stack still stops cleanly.
func checkJobCLI(t *testing.T, info devstack.Info) {
	t.Helper()
	for _, j := range devstack.Jobs {
		st, err := jobStatus(t, j, info.Brokers)
		if err != nil || len(st.Workers) != 1 || st.Workers[0].Admin != info.Workers[j] {
			t.Fatalf("job status %s: %v %+v (worker admin %s)", j, err, st.Workers, info.Workers[j])
		}
	}
	sp := filepath.Join(t.TempDir(), "cache sp") // a space: escaped in the request
	out, err := run(t, newJobStopCmd, "cache-invalidation", "--brokers", strings.Join(info.Brokers, ","), "--savepoint", sp)
	if err != nil || !strings.Contains(out, "resume with: loanflow job run cache-invalidation --from-savepoint '"+sp+"'") {
		t.Fatalf("job stop cache-invalidation: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(sp, "job.json")); err != nil {
		t.Fatalf("no savepoint: %v", err)
	}
	get(t, info.APIURL+"/readyz")
	if st, err := jobStatus(t, "decisions", info.Brokers); err != nil || !st.Healthy {
		t.Fatalf("decisions after stopping cache-invalidation: %v %+v", err, st)
	}
}

// checkDecisionMetrics: after the demo's three decisions the decisions
// worker counts them by outcome and basis with their latency, its bureau
// breaker is closed, and only the async bureau operator reports
// async_in_flight.
func checkDecisionMetrics(t *testing.T, info devstack.Info) {
	t.Helper()
	body := get(t, "http://"+info.Workers["decisions"]+"/metrics")
	var decided, timed float64
	for _, line := range strings.Split(body, "\n") {
		var v float64
		switch {
		case strings.HasPrefix(line, "loanflow_decisions_total{"):
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
			decided += v
		case strings.HasPrefix(line, "loanflow_decisions_latency_seconds_count{"):
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
			timed += v
		}
	}
	if decided < 3 || timed < 3 {
		t.Errorf("after the demo: %v decisions counted, %v timed; want at least 3", decided, timed)
	}
	for _, want := range []string{`loanflow_decisions_total{basis="FALLBACK",decision="REFER"}`, "loanflow_decisions_bureau_breaker_state 0",
		`loanflow_decisions_bureau_fallbacks_total{reason="BUREAU_TIMEOUT"}`, `loanflow_engine_async_in_flight{job="decisions",operator="bureau"}`, "loanflow_build_info{"} {
		if !strings.Contains(body, want) {
			t.Errorf("decisions metrics lack %s", want)
		}
	}
	for _, line := range strings.Split(body, "\n") {
		// The decisions job's async operators: the bureau calls (of
		// customers not found, and of unknown applicants) and the
		// applicant check (a PostgreSQL read of the customer's SSN index).
		if strings.HasPrefix(line, "loanflow_engine_async_in_flight{") && !strings.Contains(line, `operator="bureau"`) &&
			!strings.Contains(line, `operator="bureau-unknown"`) && !strings.Contains(line, `operator="applicant-check"`) {
			t.Errorf("a synchronous operator reports async_in_flight: %s", line)
		}
	}
}
