package peerbench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// The recovery workload: 1M keys ("k<i>", one record each) over 4
// partitions, then a probe record per partition ("probe0-<p>"), counted per
// key in state. Once every probe's output is out and a checkpoint or
// commit has passed, the side is killed with SIGKILL and started again on
// the same state directory (Flink from its latest retained checkpoint);
// recovery is the time from that start to the output of a probe produced
// right after it.
const recoveryParts = 4

func recoveryWorkload(ctx context.Context, cfg *Config, sides []side) (string, error) {
	keys := cfg.scaled(1_000_000)
	prefix := fmt.Sprintf("peers%d-rec", time.Now().UnixNano()%1_000_000)
	in := prefix + "-in"
	if err := createTopics(ctx, cfg.Brokers, recoveryParts, in); err != nil {
		return "", err
	}
	p, err := newProducer(cfg.Brokers)
	if err != nil {
		return "", err
	}
	defer p.close()
	val := []byte("x")
	for i := 0; i < keys; i++ {
		p.send(ctx, in, -1, []byte("k"+strconv.Itoa(i)), val, baseTime)
	}
	for part := int32(0); part < recoveryParts; part++ {
		p.send(ctx, in, part, []byte(fmt.Sprintf("probe0-%d", part)), val, baseTime)
	}
	if err := p.flush(ctx); err != nil {
		return "", err
	}
	cfg.logf("recovery: %d keys in %s", keys, in)
	probeN := 0
	rs := runSides(ctx, cfg, sides, func(s side, i int) (sample, error) {
		job := fmt.Sprintf("%s-%s-%d", prefix, slug(s.name), i)
		out := job + "-out"
		if err := createTopics(ctx, cfg.Brokers, recoveryParts, out); err != nil {
			return sample{}, err
		}
		w := WorkerSpec{Workload: "recovery", Brokers: cfg.Brokers, Job: job, In: in, Out: out,
			StateDir: stateDir(cfg, job), CommitMS: cfg.CommitInterval.Milliseconds()}
		// Build the state: every probe of the first round out.
		_, _, first, err := cfg.measureProc(ctx, s.name, cfg.command(s, w), stateDir(cfg, job+".log"), out, "",
			func(o output) bool { return o.records >= recoveryParts }, 15*time.Minute)
		if err != nil {
			return sample{}, fmt.Errorf("building state: %w", err)
		}
		built := time.Now()
		// Let a checkpoint (commit) cover the state, then crash.
		if s.built != nil && s.built.Name == "flink" {
			if _, err := waitCheckpoint(ctx, w.StateDir, built, 2*time.Minute); err != nil {
				first.kill()
				return sample{}, err
			}
		} else {
			time.Sleep(3 * cfg.CommitInterval)
		}
		first.kill() // SIGKILL
		cmd := cfg.command(s, w)
		if s.built != nil && s.built.Name == "flink" {
			chk, err := latestCheckpoint(w.StateDir)
			if err != nil {
				return sample{}, err
			}
			cmd = s.built.Command("recovery", map[string]string{"brokers": joinComma(cfg.Brokers), "app": w.Job, "in": w.In, "out": w.Out,
				"state": w.StateDir, "commit_ms": fmt.Sprint(w.CommitMS), "restore": chk})
		}
		// A probe key of its own: the other sides read it too, later.
		probeN++
		key := fmt.Sprintf("probe%d-0", probeN)
		probe := func() {
			p.send(ctx, in, 0, []byte(key), val, baseTime)
			_ = p.flush(ctx)
		}
		smp, _, second, err := cfg.measureProc(ctx, s.name, cmd, stateDir(cfg, job+"-restart.log"), out, key,
			func(o output) bool { return o.tracked > 0 }, 10*time.Minute, probe)
		if second != nil {
			second.kill()
		}
		return smp, err
	})
	what := fmt.Sprintf("A count per key over %d keys (4 partitions) in state on disk (Loanflow: Pebble with its changelog topic; Kafka Streams: RocksDB store with its changelog, exactly_once_v2 and static membership (group.instance.id), as Loanflow's worker has; Flink: RocksDB, incremental checkpoints retained and restored). "+
		"Once the state is built and a commit / checkpoint has passed, the side is killed with SIGKILL and started again on the same state directory (Flink from its latest checkpoint: a local MiniCluster dies with the process); "+
		"the figure is the time from that restart to the output of a record produced right after it, read_committed. Records/s and CPU columns here are over the restart only.", keys)
	return recoveryTable(what, rs), nil
}

func joinComma(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}

func recoveryTable(what string, rs []sideResult) string {
	s := fmt.Sprintf("\n### Recovery after SIGKILL\n\n%s\n\n| side | recovery s (median) | CPU s of the restarted process | broker CPU s | ÷ Loanflow's | runs |\n|---|---:|---:|---:|---:|---|\n", what)
	var lf float64
	for _, r := range rs {
		if r.side == "Loanflow" && r.err == nil {
			lf = r.wall()
		}
	}
	for _, r := range rs {
		if r.err != nil {
			s += fmt.Sprintf("| %s | failed: %s | | | | |\n", r.side, oneLine(r.err.Error()))
			continue
		}
		ratio := "—"
		if r.side != "Loanflow" && lf > 0 {
			ratio = fmt.Sprintf("%.2f", r.wall()/lf)
		}
		walls := ""
		for i, x := range r.samples {
			if i > 0 {
				walls += ", "
			}
			walls += fmt.Sprintf("%.2f", x.wall.Seconds())
		}
		s += fmt.Sprintf("| %s | %.2f | %.2f | %.2f | %s | %s s |\n", r.side, r.wall(), r.cpu(), r.brokerCPU(), ratio, walls)
	}
	return s
}

// latestCheckpoint is the newest completed Flink checkpoint under dir.
func latestCheckpoint(dir string) (string, error) {
	ms, _ := filepath.Glob(filepath.Join(dir, "checkpoints", "*", "chk-*", "_metadata"))
	var best string
	var bestT time.Time
	for _, m := range ms {
		st, err := os.Stat(m)
		if err == nil && st.ModTime().After(bestT) {
			best, bestT = filepath.Dir(m), st.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("no completed Flink checkpoint under %s", dir)
	}
	return best, nil
}

// waitCheckpoint waits for a Flink checkpoint completed after t.
func waitCheckpoint(ctx context.Context, dir string, t time.Time, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ms, _ := filepath.Glob(filepath.Join(dir, "checkpoints", "*", "chk-*", "_metadata"))
		for _, m := range ms {
			if st, err := os.Stat(m); err == nil && st.ModTime().After(t) {
				return filepath.Dir(m), nil
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("no Flink checkpoint completed under %s within %s", dir, timeout)
}
