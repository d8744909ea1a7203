package apibench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// LoadSpec is one open-loop phase for a separate load-generator process
// (Config.LoadCommand): what to send, at what rate, for how long, and the
// bench's state the requests need.
type LoadSpec struct {
	URL         string
	Token       string
	Op          string // healthz, hit, miss, update
	Rate        int
	Duration    time.Duration
	MaxInFlight int
	IDs         []string    // customers (hit, miss)
	Next        int         // the position in IDs the phase starts at
	Loans       []LoanState // (update)
	Client      string      // ClientRaw (default) or ClientNetHTTP
}

// LoanState is a loan the update phase patches: its id, version and
// balance in cents.
type LoanState struct {
	ID      string
	Version int64
	Cents   int64
}

// LoadResult is what the load generator measured, and the state it hands
// back (loans' versions after the updates).
type LoadResult struct {
	Latency Latency
	Loans   []LoanState
	// Resent counts GETs sent a second time because the server had closed
	// their idle connection (rawClient).
	Resent int64
}

// StartedLine is the first line a load generator writes on stdout: the
// time its first request was scheduled (the miss phase's janitor follows
// it).
const StartedLine = "started "

// Generate runs spec's open-loop phase from this process against spec.URL
// and returns the client-side latencies (the command `loanflow
// bench-api-load` runs it). started is called with the first request's
// scheduled time.
func Generate(ctx context.Context, spec LoadSpec, started func(time.Time)) (LoadResult, error) {
	b := &bench{cfg: Config{URL: spec.URL, MaxInFlight: spec.MaxInFlight}, token: spec.Token, ids: spec.IDs, next: spec.Next,
		loans: make(chan loanState, len(spec.Loans))}
	if err := b.useClient(spec.Client); err != nil {
		return LoadResult{}, err
	}
	defer b.closeClients()
	b.hitSeq.Store(int64(spec.Next))
	for _, l := range spec.Loans {
		b.loans <- loanState{id: l.ID, version: l.Version, cents: l.Cents}
	}
	ops := map[string]func(context.Context) error{"healthz": b.healthz, "hit": b.lookupHit, "miss": b.lookupMiss, "update": b.update}
	op, ok := ops[spec.Op]
	if !ok {
		return LoadResult{}, fmt.Errorf("apibench: unknown op %q", spec.Op)
	}
	res, lat := b.drive(ctx, spec.Rate, spec.Duration, op, started)
	summarize(&res, lat)
	out := LoadResult{Latency: res}
	if b.raw != nil {
		out.Resent = b.raw.resent.Load()
	}
	close(b.loans)
	for l := range b.loans {
		out.Loans = append(out.Loans, LoanState{ID: l.id, Version: l.version, Cents: l.cents})
	}
	return out, nil
}

// remote runs one phase in a load-generator process (cfg.LoadCommand):
// the server's CPU, its own histogram and the machine are sampled here,
// around the child's run, and the child's CPU counts among the other
// processes.
func (b *bench) remote(ctx context.Context, name, op string, rate int, d, goal time.Duration, janitor bool) Latency {
	res := Latency{Name: name, Rate: rate, Goal: goal}
	spec := LoadSpec{URL: b.cfg.URL, Token: b.token, Op: op, Rate: rate, Duration: d, MaxInFlight: b.cfg.MaxInFlight, IDs: b.ids, Client: b.cfg.Client}
	b.missMu.Lock()
	spec.Next = b.next
	b.missMu.Unlock()
	if op == "hit" {
		spec.Next = int(b.hitSeq.Load())
	}
	if op == "update" {
		for len(b.loans) > 0 {
			l := <-b.loans
			spec.Loans = append(spec.Loans, LoanState{ID: l.id, Version: l.version, Cents: l.cents})
		}
	}
	in, _ := json.Marshal(spec)
	cmd := exec.CommandContext(ctx, b.cfg.LoadCommand[0], b.cfg.LoadCommand[1:]...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		res.Errors, res.FirstError = 1, err.Error()
		return res
	}
	h0, a0, w0 := b.serverHist(), b.histOf("loanflow_api_audit_commit_seconds"), b.histOf("loanflow_api_audit_wait_seconds")
	cpu0 := b.cpu.sample()
	if err := cmd.Start(); err != nil {
		res.Errors, res.FirstError = 1, err.Error()
		return res
	}
	rd := bufio.NewReader(stdout)
	var stopJanitor func()
	if line, err := rd.ReadString('\n'); err == nil && strings.HasPrefix(line, StartedLine) {
		if t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(strings.TrimPrefix(line, StartedLine))); err == nil && janitor {
			// The child sends request i at t + i/rate: the janitor keeps
			// ahead of that schedule.
			start := spec.Next
			var mu sync.Mutex
			pos := func() int {
				mu.Lock()
				defer mu.Unlock()
				return start + int(time.Since(t).Seconds()*float64(rate))
			}
			stopJanitor = b.startJanitorAt(ctx, pos)
		}
	}
	body, _ := io.ReadAll(rd)
	werr := cmd.Wait()
	if stopJanitor != nil {
		stopJanitor()
	}
	used := b.cpu.sample().sub(cpu0)
	var out LoadResult
	if err := json.Unmarshal(body, &out); err != nil || werr != nil {
		res.Errors, res.FirstError = 1, fmt.Sprintf("load generator: %v %v: %s", werr, err, stderr.String())
		return res
	}
	for _, l := range out.Loans {
		b.loans <- loanState{id: l.ID, version: l.Version, cents: l.Cents}
	}
	if op == "hit" {
		b.hitSeq.Add(int64(out.Latency.Sent))
	} else {
		b.missMu.Lock()
		b.next += out.Latency.Sent + out.Latency.Dropped
		b.missMu.Unlock()
	}
	res = out.Latency
	res.Name, res.Goal = name, goal
	if out.Resent > 0 {
		res.Note = joinNonEmpty("; ", res.Note, fmt.Sprintf("%d GETs resent after the server closed an idle connection", out.Resent))
	}
	res.CPU, res.Machine = used.perRequest(res.Sent), used.machine()
	res.Server = b.serverHist().sub(h0).p99()
	if a := b.histOf("loanflow_api_audit_commit_seconds").sub(a0); a.total > 0 {
		res.Server += "; " + a.quantile("audit commit", 50) + ", " + a.quantile("audit commit", 99) + ", " + a.quantile("audit commit", 99.9)
	}
	if a := b.histOf("loanflow_api_audit_wait_seconds").sub(w0); a.total > 0 {
		res.Server += "; " + a.quantile("audit wait", 50) + ", " + a.quantile("audit wait", 99) + ", " + a.quantile("audit wait", 99.9)
	}
	res.GoalMet = res.Goal == 0 || (res.P99 < res.Goal && res.Errors == 0 && res.Dropped == 0)
	return res
}
