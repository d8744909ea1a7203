package peerbench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Config configures a peer run.
type Config struct {
	// Brokers of the Apache Kafka cluster every side uses.
	Brokers []string
	// BrokerPID returns the broker JVM's pid (its CPU is reported beside
	// each side's); nil leaves the broker column empty.
	BrokerPID func() int
	// Root is the repository root holding bench/peers.
	Root string
	// Dir holds state, logs and checkpoints of every side.
	Dir string
	// Scale multiplies every workload's size (1 = the sizes the report
	// names; 0.1 for a quick look). Default 1.
	Scale float64
	// Runs per side and workload; the median is shown. Default 3.
	Runs int
	// Workloads to run: window, join, recovery, cdc. Empty runs all.
	Workloads []string
	// Peers to run beside Loanflow: kstreams, flink, debezium. Empty runs
	// all.
	Peers []string
	// LoanflowCommand starts a process running WorkerMain(spec).
	LoanflowCommand func(spec string) *exec.Cmd
	// CommitInterval is every side's commit / checkpoint interval.
	// Default 1s.
	CommitInterval time.Duration
	// Postgres is what the CDC workload needs; nil skips it.
	Postgres *PostgresEnv
	// Progress receives progress lines.
	Progress io.Writer
}

func (c *Config) defaults() {
	if c.Scale <= 0 {
		c.Scale = 1
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	if c.CommitInterval <= 0 {
		c.CommitInterval = time.Second
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
}

func (c *Config) want(list []string, x string) bool {
	if len(list) == 0 {
		return true
	}
	for _, s := range list {
		if s == x {
			return true
		}
	}
	return false
}

func (c *Config) scaled(n int) int { return max(1, int(math.Round(float64(n)*c.Scale))) }

func (c *Config) logf(format string, args ...any) {
	fmt.Fprintf(c.Progress, "bench: peers: "+format+"\n", args...)
}

// sample is one run of one side.
type sample struct {
	wall      time.Duration // process start → last output seen
	active    time.Duration // first → last output seen
	cpu       float64       // the side's process, seconds
	brokerCPU float64       // the broker during the run, seconds
}

// sideResult is every run of one side of one workload.
type sideResult struct {
	side    string
	samples []sample
	err     error
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (r sideResult) med(f func(sample) float64) float64 {
	xs := make([]float64, len(r.samples))
	for i, s := range r.samples {
		xs[i] = f(s)
	}
	return median(xs)
}

func (r sideResult) wall() float64 { return r.med(func(s sample) float64 { return s.wall.Seconds() }) }
func (r sideResult) cpu() float64  { return r.med(func(s sample) float64 { return s.cpu }) }
func (r sideResult) brokerCPU() float64 {
	return r.med(func(s sample) float64 { return s.brokerCPU })
}
func (r sideResult) active() float64 {
	return r.med(func(s sample) float64 { return s.active.Seconds() })
}

// measure starts a side and waits until the watcher says its output is
// complete; it reads the side's CPU time then and kills it.
func (c *Config) measure(ctx context.Context, name string, cmd *exec.Cmd, logPath, outTopic string, done func(output) bool, timeout time.Duration) (sample, output, error) {
	s, o, p, err := c.measureProc(ctx, name, cmd, logPath, outTopic, "", done, timeout)
	if p != nil {
		p.kill()
	}
	return s, o, err
}

// measureProc is measure leaving the process running (nil on error); then,
// once the process started, it calls each of after.
// track names a key whose records output.tracked counts.
func (c *Config) measureProc(ctx context.Context, name string, cmd *exec.Cmd, logPath, outTopic, track string, done func(output) bool, timeout time.Duration, after ...func()) (sample, output, *process, error) {
	ready := make(chan struct{})
	type res struct {
		o   output
		err error
	}
	resc := make(chan res, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		o, err := watch(wctx, c.Brokers, outTopic, track, done, timeout, ready)
		resc <- res{o, err}
	}()
	<-ready
	b0 := c.brokerCPU()
	p, err := startProcess(name, cmd, logPath)
	if err != nil {
		return sample{}, output{}, nil, err
	}
	for _, f := range after {
		f()
	}
	var r res
	select {
	case r = <-resc:
	case <-p.exited:
		select {
		case r = <-resc:
		case <-time.After(2 * time.Second):
			return sample{}, output{}, nil, p.failure()
		}
	}
	if r.err != nil {
		p.kill()
		return sample{}, r.o, nil, fmt.Errorf("%s: %w (log: %s)", name, r.err, logPath)
	}
	cpu, err := p.cpu()
	if err != nil {
		p.kill()
		return sample{}, r.o, nil, err
	}
	s := sample{wall: r.o.last.Sub(p.start), active: r.o.last.Sub(r.o.first), cpu: cpu, brokerCPU: c.brokerCPU() - b0}
	return s, r.o, p, nil
}

func (c *Config) brokerCPU() float64 {
	if c.BrokerPID == nil {
		return 0
	}
	v, _ := CPUSeconds(c.BrokerPID())
	return v
}

// side is one engine able to run the workloads.
type side struct {
	name  string
	built *Built // nil for Loanflow
}

// command is the process that runs workload w for this side.
func (c *Config) command(s side, w WorkerSpec) *exec.Cmd {
	if s.built == nil {
		raw, _ := json.Marshal(w)
		return c.LoanflowCommand(string(raw))
	}
	args := map[string]string{"brokers": strings.Join(w.Brokers, ","), "app": w.Job, "in": w.In, "out": w.Out,
		"state": w.StateDir, "commit_ms": fmt.Sprint(w.CommitMS)}
	if w.Table != "" {
		args["table"] = w.Table
	}
	if w.WindowMS != 0 {
		args["window_ms"] = fmt.Sprint(w.WindowMS)
	}
	return s.built.Command(w.Workload, args)
}

// Run builds the selected peers, runs the selected workloads and returns
// the report section in Markdown.
func Run(ctx context.Context, cfg Config) (string, error) {
	cfg.defaults()
	if cfg.LoanflowCommand == nil {
		return "", fmt.Errorf("peerbench: Config.LoanflowCommand is required")
	}
	if cfg.Root == "" {
		root, err := FindRoot()
		if err != nil {
			return "", err
		}
		cfg.Root = root
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return "", err
	}
	built := map[string]*Built{}
	for _, p := range []Peer{KStreams, Flink, Debezium} {
		if !cfg.want(cfg.Peers, p.Name) {
			continue
		}
		if p.Name == "debezium" && !cfg.want(cfg.Workloads, "cdc") {
			continue
		}
		if p.Name != "debezium" && !(cfg.want(cfg.Workloads, "window") || cfg.want(cfg.Workloads, "join") || cfg.want(cfg.Workloads, "recovery")) {
			continue
		}
		cfg.logf("building %s with Maven", p.Name)
		b, err := Build(ctx, cfg.Root, p)
		if err != nil {
			return "", err
		}
		built[p.Name] = b
	}
	sides := []side{{name: "Loanflow"}}
	for _, n := range []string{"kstreams", "flink"} {
		if b := built[n]; b != nil {
			sides = append(sides, side{name: b.Version, built: b})
		}
	}
	var sb strings.Builder
	sb.WriteString(methodology(cfg))
	type wl struct {
		name string
		fn   func(context.Context, *Config, []side) (string, error)
	}
	for _, w := range []wl{{"window", windowWorkload}, {"join", joinWorkload}, {"recovery", recoveryWorkload}} {
		if !cfg.want(cfg.Workloads, w.name) {
			continue
		}
		cfg.logf("%s", w.name)
		md, err := w.fn(ctx, &cfg, sides)
		if err != nil {
			return sb.String(), fmt.Errorf("%s: %w", w.name, err)
		}
		sb.WriteString(md)
	}
	if cfg.want(cfg.Workloads, "cdc") && cfg.Postgres != nil {
		cfg.logf("cdc")
		md, err := cdcWorkload(ctx, &cfg, built["debezium"])
		if err != nil {
			return sb.String(), fmt.Errorf("cdc: %w", err)
		}
		sb.WriteString(md)
	}
	return sb.String(), nil
}

func methodology(cfg Config) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Every side runs as its own process started by `loanflow bench`, against the same single-node Apache Kafka 4.4.0 broker (KRaft, a JVM) and the same input topics, one side at a time. ")
	fmt.Fprintf(&sb, "A run is timed from the side's process start (JVM start, job submission and state restore included) to the moment an independent read_committed consumer has seen its last output record; its CPU time (user + system, from /proc/PID/stat) is read at that moment. ")
	fmt.Fprintf(&sb, "Each figure is the median of %d runs, every run a fresh process on fresh output topics and an empty state directory (no warm-up run: JIT compilation is part of every JVM figure, as it is part of every job start). ", cfg.Runs)
	fmt.Fprintf(&sb, "Commit / checkpoint interval %s on every side; every side exactly-once (Loanflow transactions per checkpoint, Kafka Streams exactly_once_v2, Flink checkpoints with the transactional KafkaSink); JVMs run with -Xmx2g and G1; ", cfg.CommitInterval)
	fmt.Fprintf(&sb, "Loanflow runs one task per input partition on GOMAXPROCS = the machine's cores; Kafka Streams 2 stream threads; Flink parallelism 2 in a local MiniCluster. ")
	fmt.Fprintf(&sb, "\"CPU s / M\" is the side's CPU seconds per million input records; \"broker CPU s / M\" is the broker's over the same run. The ratio is the peer's wall time ÷ Loanflow's (above 1: Loanflow is faster).\n")
	if cfg.Scale != 1 {
		fmt.Fprintf(&sb, "\n**Scaled run (--peer-scale %g): sizes are cut; these figures are a smoke test, not measurements.**\n", cfg.Scale)
	}
	return sb.String()
}

// table renders one workload's results.
func table(title, what string, records int, results []sideResult, note string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n### %s\n\n%s\n\n", title, what)
	sb.WriteString("| side | wall s (median) | records/s | CPU s / M records | broker CPU s / M | wall ÷ Loanflow's | runs |\n|---|---:|---:|---:|---:|---:|---|\n")
	var lf float64
	for _, r := range results {
		if r.side == "Loanflow" && r.err == nil {
			lf = r.wall()
		}
	}
	m := float64(records) / 1e6
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(&sb, "| %s | failed: %s | | | | | |\n", r.side, oneLine(r.err.Error()))
			continue
		}
		ratio := "—"
		if r.side != "Loanflow" && lf > 0 {
			ratio = fmt.Sprintf("%.2f", r.wall()/lf)
		}
		walls := make([]string, len(r.samples))
		for i, s := range r.samples {
			walls[i] = fmt.Sprintf("%.1f", s.wall.Seconds())
		}
		fmt.Fprintf(&sb, "| %s | %.2f | %.0f | %.2f | %.2f | %s | %s s |\n", r.side, r.wall(), float64(records)/r.wall(),
			r.cpu()/m, r.brokerCPU()/m, ratio, strings.Join(walls, ", "))
	}
	for _, r := range results {
		if r.err != nil || r.side == "Loanflow" || lf == 0 {
			continue
		}
		if r.wall() < lf {
			fmt.Fprintf(&sb, "\n**%s is faster than Loanflow here** (%.2fs vs %.2fs): see the note below the table.\n", r.side, r.wall(), lf)
		}
	}
	if note != "" {
		sb.WriteString("\n" + note + "\n")
	}
	return sb.String()
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 900 {
		s = s[:900] + "…"
	}
	return s
}

// runSides runs every side cfg.Runs times, round-robin (so a change in
// the machine's load spreads over the sides), with run(side, i).
func runSides(ctx context.Context, cfg *Config, sides []side, run func(s side, i int) (sample, error)) []sideResult {
	res := make([]sideResult, len(sides))
	for i, s := range sides {
		res[i].side = s.name
	}
	for i := 0; i < cfg.Runs; i++ {
		for j, s := range sides {
			if res[j].err != nil {
				continue
			}
			smp, err := run(s, i)
			if err != nil {
				cfg.logf("%s run %d: %v", s.name, i+1, err)
				res[j].err = err
				continue
			}
			cfg.logf("%s run %d: %.2fs wall, %.2f CPU s, broker %.2f CPU s", s.name, i+1, smp.wall.Seconds(), smp.cpu, smp.brokerCPU)
			res[j].samples = append(res[j].samples, smp)
		}
	}
	return res
}

func stateDir(cfg *Config, parts ...string) string {
	return filepath.Join(append([]string{cfg.Dir}, parts...)...)
}

func slug(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	return b.String()
}
