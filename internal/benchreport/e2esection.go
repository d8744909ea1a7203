package benchreport

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// e2eRun is what the section measured.
type e2eRun struct {
	s                 e2eSettings
	d                 *devProcess
	floor             []time.Duration // the bureau simulator alone
	rest, restLookup  loadResult
	unknown, capacity loadResult
	capacityRate      float64 // offered in the capacity run
	steps             []stepResult
	profile, top      string
	profileErr        error
}

type stepResult struct {
	e2eStep
	r   loadResult
	cpu map[string]float64 // seconds per group
}

func e2eSection(ctx context.Context, cfg Config, e *env) (string, error) {
	if cfg.Loanflow == "" {
		return "", fmt.Errorf("the end-to-end section needs the loanflow binary (Config.Loanflow)")
	}
	run := &e2eRun{s: e2eSizes(cfg.Quick)}
	if len(cfg.E2ESteps) > 0 {
		run.s.steps = nil
		for _, st := range cfg.E2ESteps {
			run.s.steps = append(run.s.steps, e2eStep{rate: st.Rate, secs: st.Duration.Seconds()})
		}
	}
	d, err := newDevProcess(cfg.Loanflow, filepath.Join(e.dir, "e2e"))
	if err != nil {
		return "", err
	}
	run.d = d
	defer d.stop()
	err = run.asOf(ctx, cfg)
	if err == nil {
		err = run.lookup(ctx, cfg)
	}
	if err == nil {
		err = run.sustained(ctx, cfg)
	}
	if err != nil {
		d.stop()
		if kept := keepLog(d, cfg.profileDir()); kept != "" {
			err = fmt.Errorf("%w (loanflow dev's log kept in %s)", err, kept)
		}
		return "", err
	}
	return run.markdown(), nil
}

// keepLog copies loanflow dev's log out of the temporary directory after
// a failure; it returns where, or "" when it could not.
func keepLog(d *devProcess, dir string) string {
	b, err := os.ReadFile(filepath.Join(d.dir, "loanflow.log"))
	if err != nil || os.MkdirAll(dir, 0o755) != nil {
		return ""
	}
	path := filepath.Join(dir, "e2e-failed-loanflow.log")
	if os.WriteFile(path, b, 0o644) != nil {
		return ""
	}
	return path
}

func (r *e2eRun) bureauFlags() []string {
	lat := r.s.bureauLatency.String()
	return []string{"--bureau-latency-min", lat, "--bureau-latency-max", lat}
}

// asOf is the first run: the default join, a bureau without a capacity
// limit; at rest, then unknown applicants.
func (r *e2eRun) asOf(ctx context.Context, cfg Config) error {
	p := cfg.Progress
	fmt.Fprintln(p, "bench: e2e: starting loanflow dev (as-of join)...")
	if err := r.d.start(ctx, r.bureauFlags()...); err != nil {
		return err
	}
	var err error
	if r.floor, err = bureauFloor(ctx, r.d.bureau, 100, 20); err != nil {
		return fmt.Errorf("bureau alone: %w", err)
	}
	// Creates the lenders and customers the later runs reuse.
	if _, err := r.d.load(ctx, p, 20, 2, 1, 8, r.s.drain); err != nil {
		return err
	}
	if r.rest, err = r.d.load(ctx, p, r.s.restRate, r.s.restSecs, 1, 8, r.s.drain); err != nil {
		return err
	}
	if r.unknown, err = r.d.load(ctx, p, r.s.unknownRate, r.s.unknownSecs, 0, 64, r.s.drain); err != nil {
		return err
	}
	r.d.stop()
	return nil
}

// sustained is the last run, on the same data, with the default join
// again: the steps. It comes after both at-rest runs so that neither
// measures a stack still absorbing the steps' million applications (the
// lookup join's at-rest p99 was 72 and 112 ms when it ran right after a
// 5-minute step at 3,000/s, its POST answers' p99 19-25 ms against 5 ms
// at rest on a fresh stack; 39-43 ms after 1-minute steps).
func (r *e2eRun) sustained(ctx context.Context, cfg Config) error {
	fmt.Fprintln(cfg.Progress, "bench: e2e: restarting loanflow dev (as-of join) for the sustained steps...")
	if err := r.d.start(ctx, r.bureauFlags()...); err != nil {
		return err
	}
	// Warm-up: the restarted stack's first seconds are not part of the
	// figure.
	if _, err := r.d.load(ctx, cfg.Progress, 20, 2, 1, 8, r.s.drain); err != nil {
		return err
	}
	for i, st := range r.s.steps {
		res, err := r.step(ctx, cfg, st, i == len(r.s.steps)-1)
		if err != nil {
			return err
		}
		r.steps = append(r.steps, res)
	}
	r.d.stop()
	return nil
}

// stepTerminals is how many terminals submit concurrently in a sustained
// step. Each waits for its POST's answer, so they bound the offered rate at
// terminals ÷ answer time: with 256, a stall of the stack of a few hundred
// milliseconds held every terminal and the generator fell behind its
// schedule for good (3,000/s offered, 2,990/s achieved over 5 minutes). A
// holiday peak has thousands of terminals; 1,000 (the most `loanflow load`
// takes) keep the load open.
const stepTerminals = 1000

// step runs one sustained rate, measuring CPU of loanflow dev's process
// tree around it; the last step also takes the CPU profile.
func (r *e2eRun) step(ctx context.Context, cfg Config, st e2eStep, last bool) (stepResult, error) {
	before, err := cpuTicks(r.d.pid())
	if err != nil {
		return stepResult{}, err
	}
	profiled := make(chan error, 1)
	if last {
		r.profile = filepath.Join(cfg.profileDir(), "e2e-cpu.pprof")
		secs := min(r.s.profileSecs, max(1, int(st.secs)-1))
		go func() { profiled <- r.d.profile(ctx, secs, r.profile) }()
	} else {
		profiled <- nil
	}
	res, err := r.d.load(ctx, cfg.Progress, st.rate, st.secs, 0.8, stepTerminals, r.s.drain)
	if perr := <-profiled; last {
		r.profileErr = perr
		if perr == nil {
			r.top = pprofTop(ctx, cfg.Loanflow, r.profile, 15)
		}
	}
	if err != nil {
		return stepResult{}, err
	}
	after, err := cpuTicks(r.d.pid())
	if err != nil {
		return stepResult{}, err
	}
	return stepResult{e2eStep: st, r: res, cpu: cpuSeconds(before, after)}, nil
}

// lookup is the second run, on the same data: the lookup join, and a
// bureau with a capacity (requests in flight; beyond it, 429 and the job
// retries), driven past that capacity.
func (r *e2eRun) lookup(ctx context.Context, cfg Config) error {
	fmt.Fprintln(cfg.Progress, "bench: e2e: restarting loanflow dev (lookup join, bureau capacity limited)...")
	flags := append(r.bureauFlags(), "--decisions-join", "lookup", "--bureau-capacity", strconv.Itoa(r.s.bureauCapacity))
	if err := r.d.start(ctx, flags...); err != nil {
		return err
	}
	defer r.d.stop()
	// Warm-up, as the first run has (its customers are created then): the
	// restarted stack's first seconds are not part of the figure.
	if _, err := r.d.load(ctx, cfg.Progress, 20, 2, 1, 8, r.s.drain); err != nil {
		return err
	}
	var err error
	if r.restLookup, err = r.d.load(ctx, cfg.Progress, r.s.restRate, r.s.restSecs, 1, 8, r.s.drain); err != nil {
		return err
	}
	r.capacityRate = 1.5 * r.capacityPerSec()
	r.capacity, err = r.d.load(ctx, cfg.Progress, r.capacityRate, max(r.s.unknownSecs/2, 4), 0, 256, r.s.drain)
	return err
}

func (r *e2eRun) capacityPerSec() float64 {
	return float64(r.s.bureauCapacity) / r.s.bureauLatency.Seconds()
}

func ms(v float64) string { return fmt.Sprintf("%.0f ms", v) }

func dur(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// basis is a run's latency of one decision basis as "p50 / p99 (n)".
func basis(l loadResult, b string) (string, float64) {
	s, ok := l.LatencyMs[b]
	if !ok {
		return "no decisions", -1
	}
	return fmt.Sprintf("%s / %s (%d)", ms(s.P50), ms(s.P99), s.Count), s.P99
}

func (r *e2eRun) markdown() string {
	var sb strings.Builder
	d := r.d
	sb.WriteString("## End to end (loanflow dev)\n\n")
	fmt.Fprintf(&sb, "The real `loanflow dev` (this binary, one process plus its broker child, PostgreSQL and redis-server) in a temporary directory; "+
		"`loanflow load` in another process submits through `POST /v1/loan-applications` (4 lenders, 100 customers each) and reads `loan_decisions` "+
		"read_committed. Latency is submission to the decision read. Decisions commit every %s, and as soon as %s after the last commit "+
		"when the job's input runs dry; the CDC heartbeat runs every %s; the bureau simulator answers in %s without errors.\n\n",
		d.commitInterval, d.minCommitInterval, d.heartbeatInterval, r.s.bureauLatency)
	sb.WriteString("| measure | figure | baseline (same run) | goal | met |\n|---|---|---|---|---|\n")
	commitWait := cmp.Or(d.minCommitInterval, d.commitInterval) // at rest the input runs dry after each application
	asOfFloor := float64((commitWait + d.heartbeatInterval).Milliseconds())
	fig, p99 := basis(r.rest, "CUSTOMER_360")
	fmt.Fprintf(&sb, "| known customer at %.0f/s, as-of join: p50 / p99 (decisions) | %s | floor: commit wait + heartbeat = %s | p99 < 150 ms | %s |\n",
		r.s.restRate, fig, ms(asOfFloor), yesNo(p99 >= 0 && p99 < 150))
	fig, p99 = basis(r.restLookup, "CUSTOMER_360")
	fmt.Fprintf(&sb, "| known customer at %.0f/s, lookup join: p50 / p99 | %s | floor: commit wait = %s | p99 < 50 ms | %s |\n",
		r.s.restRate, fig, dur(commitWait), yesNo(p99 >= 0 && p99 < 50))
	fmt.Fprintf(&sb, "| bureau simulator alone: p50 / p99 (%d calls, 20 at a time) | %s / %s | — | — | — |\n",
		len(r.floor), dur(pct(r.floor, 0.5)), dur(pct(r.floor, 0.99)))
	goal := float64((r.s.bureauLatency + 100*time.Millisecond).Milliseconds())
	fig, p99 = basis(r.unknown, "CREDIT_BUREAU")
	fmt.Fprintf(&sb, "| unknown applicant at %.0f/s: p50 / p99 | %s | bureau alone p99 %s | p99 < bureau latency + 100 ms = %s | %s |\n",
		r.s.unknownRate, fig, dur(pct(r.floor, 0.99)), ms(goal), yesNo(p99 >= 0 && p99 < goal))
	thr := r.capacity.DecisionRate * float64(r.capacity.LatencyMs["CREDIT_BUREAU"].Count) / float64(max(1, r.capacity.LatencyMs["ALL"].Count))
	fmt.Fprintf(&sb, "| unknown applicants offered at %.0f/s for %.0f s, bureau capacity %d in flight: bureau decisions/s (fallbacks, lost) | %.0f (%d, %d) | capacity ÷ latency = %.0f/s | ≥ 0.9 × %.0f/s | %s |\n",
		r.capacityRate, r.capacity.Seconds, r.s.bureauCapacity, thr, r.capacity.LatencyMs["FALLBACK"].Count, r.capacity.Missing, r.capacityPerSec(), r.capacityPerSec(),
		yesNo(thr >= 0.9*r.capacityPerSec()))
	sb.WriteString("\nWhere the time of the known customers at rest goes (`loanflow load`'s stages, p50 / p99 of every decision of the run, the few applications of a customer not yet in customer_360 decided by the bureau included): " +
		stages("as-of", r.rest) + "; " + stages("lookup", r.restLookup) + ".\n")
	sb.WriteString("\n" + r.stepsTable() + "\n" + r.cpuTable() + "\n" + r.profileText())
	return sb.String()
}

// stages is a run's stage split: submission to the API's answer, to the
// decision's decided_at, and decided_at to the read.
func stages(name string, l loadResult) string {
	a, d, v := l.StagesMs["answered"], l.StagesMs["decided"], l.StagesMs["visible"]
	if a.Count+d.Count+v.Count == 0 {
		return name + ": no stages"
	}
	return fmt.Sprintf("%s: answered %s / %s, decided %s / %s, then visible %s / %s", name, ms(a.P50), ms(a.P99), ms(d.P50), ms(d.P99), ms(v.P50), ms(v.P99))
}

func (r *e2eRun) stepsTable() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Sustained steps, 80%% known customers, %d terminals; the answer is submission to the API's 202:\n\n", stepTerminals)
	sb.WriteString("| offered | for | submitted/s achieved | decided/s | accepted / rejected | p50 / p99 (all) | answer p50 / p99 | lost / duplicated | goal | met |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for i, st := range r.steps {
		all := st.r.LatencyMs["ALL"]
		goal, met := "—", "—"
		if i == len(r.steps)-1 {
			goal = "≥ 3,000/s for 5 min, p99 < 1 s, 0 lost, 0 duplicated"
			met = yesNo(sustainedGoalMet(st.rate, st.secs, st.r))
		}
		ans := st.r.StagesMs["answered"]
		fmt.Fprintf(&sb, "| %.0f/s | %.0f s | %.1f | %.0f | %d / %d%s | %s / %s | %s / %s | %d / %d | %s | %s |\n", st.rate, st.secs, st.r.Rate, st.r.DecisionRate,
			st.r.Accepted, st.r.Rejected, rejectedBy(st.r), ms(all.P50), ms(all.P99), ms(ans.P50), ms(ans.P99), st.r.Missing, st.r.Duplicated, goal, met)
	}
	return sb.String()
}

// sustainedGoalMet: ≥ 3,000/s for 5 minutes (every application of the
// schedule accepted: Rate, the spacing of the first and last submissions,
// reads 2,999.9 when the last one left a few milliseconds late), p99 < 1 s,
// none lost, duplicated or rejected.
func sustainedGoalMet(rate, secs float64, r loadResult) bool {
	all := r.LatencyMs["ALL"]
	return rate >= 3000 && secs >= 300 && float64(r.Accepted) >= rate*secs && all.Count > 0 && all.P99 < 1000 &&
		r.Missing == 0 && r.Duplicated == 0 && r.Rejected == 0
}

func rejectedBy(r loadResult) string {
	if len(r.RejectedBy) == 0 {
		return ""
	}
	var parts []string
	for k, v := range r.RejectedBy {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	return " (" + strings.Join(parts, ", ") + ")"
}

// cpuTable is CPU seconds per 1,000 decided applications per process, per
// step.
func (r *e2eRun) cpuTable() string {
	groups := map[string]bool{}
	for _, st := range r.steps {
		for g := range st.cpu {
			groups[g] = true
		}
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	sort.Strings(names)
	var sb strings.Builder
	sb.WriteString("CPU seconds per 1,000 decided applications (utime+stime of each process and its reaped children, /proc/<pid>/stat, over the step and its drain):\n\n| process |")
	for _, st := range r.steps {
		fmt.Fprintf(&sb, " %.0f/s |", st.rate)
	}
	sb.WriteString("\n|---|" + strings.Repeat("---|", len(r.steps)) + "\n")
	totals := make([]float64, len(r.steps))
	for _, g := range names {
		fmt.Fprintf(&sb, "| %s |", g)
		for i, st := range r.steps {
			per := perThousand(st.cpu[g], st.r.Decided)
			totals[i] += per
			fmt.Fprintf(&sb, " %.2f |", per)
		}
		sb.WriteString("\n")
	}
	sb.WriteString("| **all** |")
	for _, t := range totals {
		fmt.Fprintf(&sb, " **%.2f** |", t)
	}
	sb.WriteString("\n")
	if n := len(totals); n > 0 && totals[n-1] > 0 {
		fmt.Fprintf(&sb, "\nAt the last step's cost, 10,000 applications/s need %.1f CPU-seconds per second, i.e. about %.0f cores busy (before headroom).\n",
			totals[n-1]*10, totals[n-1]*10)
	}
	return sb.String()
}

func perThousand(secs float64, decided int) float64 {
	if decided == 0 {
		return 0
	}
	return secs / float64(decided) * 1000
}

func (r *e2eRun) profileText() string {
	if len(r.steps) == 0 {
		return ""
	}
	last := r.steps[len(r.steps)-1]
	hot, hotSecs := "", -1.0
	for g, s := range last.cpu {
		if s > hotSecs {
			hot, hotSecs = g, s
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nHottest process in the %.0f/s step: %s (%.1f CPU s). ", last.rate, hot, hotSecs)
	if r.profileErr != nil {
		fmt.Fprintf(&sb, "The CPU profile of loanflow dev failed: %v.\n", r.profileErr)
		return sb.String()
	}
	fmt.Fprintf(&sb, "CPU profile of loanflow dev over %d s of that step (its workers' admin listener, /debug/pprof/profile): `%s` "+
		"(`go tool pprof -top bin/loanflow %s`).\n", min(r.s.profileSecs, max(1, int(last.secs)-1)), r.profile, r.profile)
	if r.top != "" {
		sb.WriteString("\n```\n" + strings.TrimSpace(topLines(r.top, 22)) + "\n```\n")
	}
	return sb.String()
}

// topLines keeps the first n lines of pprof -top output.
func topLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[:min(n, len(lines))], "\n")
}
