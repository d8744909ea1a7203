package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// helperSpec is how a test hands a worker process its job.
type helperSpec struct {
	Job      string `json:"job"`
	Env      Env    `json:"env"`
	StateDir string `json:"state_dir"`
	WorkerID string `json:"worker_id"`
}

const helperEnvVar = "LOANFLOW_JOBS_HELPER"

// TestHelperWorker is not a test: the crash test runs the test binary with
// LOANFLOW_JOBS_HELPER set to run one decisions worker, which it kills.
func TestHelperWorker(t *testing.T) {
	raw := os.Getenv(helperEnvVar)
	if raw == "" {
		t.Skip("helper process of the crash test")
	}
	var spec helperSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	spec.Env.Logger = quietLogger()
	b := pipeline.NewBuilder(spec.Job)
	if err := BuildDecisions(b, spec.Env, testDecisionsConfig()); err != nil {
		t.Fatal(err)
	}
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: spec.Env.Brokers, StateDir: spec.StateDir, WorkerID: spec.WorkerID,
		Logger: quietLogger(), CommitInterval: 100 * time.Millisecond, TransactionTimeout: 5 * time.Second, SessionTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

type helperProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func startHelper(t *testing.T, spec helperSpec, n int) *helperProc {
	t.Helper()
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), fmt.Sprintf("worker-%d.log", n))
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWorker$", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), helperEnvVar+"="+string(raw))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &helperProc{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.done })
	return p
}

func (p *helperProc) kill() { _ = p.cmd.Process.Signal(syscall.SIGKILL); <-p.done }

func (p *helperProc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-10):], "\n")
}

// TestDecisionsSurviveSIGKILL kills the decisions worker process (SIGKILL)
// several times while applications stream in, restarts it on its state
// directory each time, and then counts: every application has exactly one
// decision on loan_decisions (read_committed), the loans table holds
// exactly the APPROVED ones, each customer's balance grew by exactly its
// loans and the audit log has one loan.create per loan; on both brokers.
func TestDecisionsSurviveSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) { testDecisionsSurviveSIGKILL(t, newStackOn(t, seeds)) })
}

func testDecisionsSurviveSIGKILL(t *testing.T, s *stack) {
	br := startBureau(t, bureau.Config{LatencyMin: time.Millisecond, LatencyMax: 30 * time.Millisecond, ErrorRate: 0.1, TimeoutRate: -1, NoFileRate: -1, Seed: 3})
	s.env.BureauURL = br.URL()
	s.addLender("K1")
	const customers = 12
	for i := 0; i < customers; i++ {
		s.addCustomer(customer{ID: fmt.Sprintf("k%02d", i), Tier: []string{"LOW", "MEDIUM", "HIGH"}[i%3], Limit: "20000.00", Balance: "0", Score: 600 + 20*i})
	}
	tp := s.env.Topics.WithDefaults()
	createTopic(t, s.env.Brokers, tp.Applications, 4, false)
	createTopic(t, s.env.Brokers, tp.Customer360, 3, false) // history kept: see TestDecisionsEndToEnd
	s.startCDC()
	awaitCustomer360(t, s.env, "k00", fmt.Sprintf("k%02d", customers-1))

	spec := helperSpec{Job: testenv.Name(t, "decisions"), Env: s.env, StateDir: t.TempDir(), WorkerID: "crash-worker"}
	spec.Env.Logger = nil
	prod := newAppProducer(t, s.env)
	rng := rand.New(rand.NewSource(11))
	var ids []string
	sent := map[string]schemas.LoanApplication{}
	produced := make(chan struct{})
	go func() { // applications stream in over ~3s
		defer close(produced)
		for batch := 0; batch < 30; batch++ {
			var apps []schemas.LoanApplication
			for i := 0; i < 10; i++ {
				id := fmt.Sprintf("ka-%03d", len(ids))
				ids = append(ids, id)
				var cust *string
				if rng.Intn(10) < 7 {
					cust = ptr(fmt.Sprintf("k%02d", rng.Intn(customers+1))) // k12 does not exist: the bureau
				}
				a := app(id, "K1", cust, fmt.Sprintf("%d.%02d", 50+rng.Intn(3000), rng.Intn(100)), time.Now())
				sent[id] = a
				apps = append(apps, a)
			}
			prod.send(apps...)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	p := startHelper(t, spec, 0)
	var booked []int
	for k := 1; k <= 4; k++ {
		time.Sleep(time.Duration(600+rng.Intn(600)) * time.Millisecond)
		p.kill()
		var n int
		if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM loans").Scan(&n); err != nil {
			t.Fatal(err)
		}
		booked = append(booked, n)
		p = startHelper(t, spec, k)
	}
	t.Logf("loans booked at each SIGKILL: %v", booked)
	<-produced

	dr := newDecisionReader(t, s.env)
	if !dr.tryAwait(60*time.Second, ids...) {
		for _, id := range ids {
			if len(dr.got[id]) == 0 {
				a := sent[id]
				c := "<unknown>"
				if a.CustomerID != nil {
					c = *a.CustomerID
				}
				t.Errorf("no decision for %s (customer %s, event time %s)", id, c, a.EventTime.Format(time.RFC3339Nano))
			}
		}
		dumpDLQ(t, s.env.Brokers, spec.Job)
		t.Fatalf("worker log:\n%s", p.tail())
	}
	dr.c.until(2*time.Second, func(*kgo.Record) { dr.n++ }, func() bool { return false }) // any late duplicate
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("worker did not stop:\n%s", p.tail())
	}
	lost, dup := 0, 0
	approved := map[string]schemas.LoanDecision{}
	for _, id := range ids {
		switch n := len(dr.got[id]); {
		case n == 0:
			lost++
		case n > 1:
			dup += n - 1
		}
		if ds := dr.got[id]; len(ds) > 0 && ds[0].Decision == schemas.DecisionApproved {
			approved[id] = ds[0]
		}
	}
	t.Logf("%d applications, 4 SIGKILLs: %d decisions read, %d lost, %d duplicated, %d approved", len(ids), dr.n, lost, dup, len(approved))
	if lost != 0 || dup != 0 || dr.n != len(ids) {
		t.Fatalf("lost %d, duplicated %d, %d records for %d applications", lost, dup, dr.n, len(ids))
	}
	if len(approved) == 0 {
		t.Fatal("no approvals: the test exercises nothing")
	}
	s.checkLoansMatch(approved)
}

// checkLoansMatch: the loans are exactly the approvals, balances grew by
// exactly the loans, one audit row per loan.
func (s *stack) checkLoansMatch(approved map[string]schemas.LoanDecision) {
	s.t.Helper()
	ctx := context.Background()
	rows, err := s.pool.Query(ctx, "SELECT application_id, customer_id, amount::text FROM loans")
	if err != nil {
		s.t.Fatal(err)
	}
	perCustomer := map[string]schemas.Decimal{}
	n := 0
	for rows.Next() {
		var app, cust, amount string
		if err := rows.Scan(&app, &cust, &amount); err != nil {
			s.t.Fatal(err)
		}
		n++
		d, ok := approved[app]
		if !ok || *d.CustomerID != cust || d.Amount.String() != amount {
			s.t.Errorf("loan of %s (%s, %s) has no matching approval (%+v)", app, cust, amount, d)
		}
		sum, err := perCustomer[cust].Add(schemas.MustParseDecimal(amount))
		if err != nil {
			s.t.Fatal(err)
		}
		perCustomer[cust] = sum
	}
	if n != len(approved) {
		s.t.Errorf("%d loans for %d approvals", n, len(approved))
	}
	for cust, sum := range perCustomer {
		var bal string
		if err := s.pool.QueryRow(ctx, "SELECT current_balance::text FROM customers WHERE customer_id = $1", cust).Scan(&bal); err != nil {
			s.t.Fatal(err)
		}
		if want, _ := sum.Rescale(2); bal != want.String() {
			s.t.Errorf("balance of %s = %s, its loans sum to %s", cust, bal, want)
		}
	}
	var audits int
	if err := s.pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM audit_log WHERE action = 'loan.create') + (SELECT count(*) FROM audit_pending WHERE action = 'loan.create')").Scan(&audits); err != nil {
		s.t.Fatal(err)
	}
	if audits != n {
		s.t.Errorf("%d loan.create audit rows for %d loans", audits, n)
	}
}
