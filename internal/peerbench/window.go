package peerbench

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// The window workload's input: key k<i mod 100k>, event time base + i/100
// ms (100 records per millisecond, 1M records per 10s window), over 4
// partitions by key hash, then a flush record (key "~flush") per partition
// at the end of the last window, which closes every window. Output: one record per key and window.
const (
	windowKeys  = 100_000
	windowMS    = 10_000
	windowParts = 4
	baseTime    = int64(1_700_000_000_000) // a multiple of the window size
)

// windowExpect is the output of n input records: results and the sum of
// their counts.
func windowExpect(n int) (results int, sum int64) {
	perWindow := 100 * windowMS
	for start := 0; start < n; start += perWindow {
		results += min(windowKeys, n-start, perWindow)
	}
	return results, int64(n)
}

func windowWorkload(ctx context.Context, cfg *Config, sides []side) (string, error) {
	n := cfg.scaled(3_000_000)
	prefix := fmt.Sprintf("peers%d-win", time.Now().UnixNano()%1_000_000)
	in := prefix + "-in"
	if err := createTopics(ctx, cfg.Brokers, windowParts, in); err != nil {
		return "", err
	}
	p, err := newProducer(cfg.Brokers)
	if err != nil {
		return "", err
	}
	defer p.close()
	val := make([]byte, 32)
	for i := 0; i < n; i++ {
		p.send(ctx, in, -1, []byte("k"+strconv.Itoa(i%windowKeys)), val, baseTime+int64(i/100))
	}
	end := baseTime + (int64((n-1)/100)/windowMS+1)*windowMS
	flush := func() {
		for part := int32(0); part < windowParts; part++ {
			p.send(ctx, in, part, []byte("~flush"), val, end)
		}
	}
	flush()
	if err := p.flush(ctx); err != nil {
		return "", err
	}
	cfg.logf("window: %d records in %s", n, in)
	results, sum := windowExpect(n)
	done := func(o output) bool { return o.records >= results && o.sum >= sum }
	rs := runSides(ctx, cfg, sides, func(s side, i int) (sample, error) {
		job := fmt.Sprintf("%s-%s-%d", prefix, slug(s.name), i)
		if err := createTopics(ctx, cfg.Brokers, windowParts, job+"-out"); err != nil {
			return sample{}, err
		}
		w := WorkerSpec{Workload: "window", Brokers: cfg.Brokers, Job: job, In: in, Out: job + "-out",
			StateDir: stateDir(cfg, job), CommitMS: cfg.CommitInterval.Milliseconds(), WindowMS: windowMS}
		// Kafka Streams checks for closed windows when it processes a
		// record (at most once a second), so the flush record is repeated
		// (same key, same time: nothing else changes) while the side runs.
		tctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() {
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-tctx.Done():
					return
				case <-t.C:
					flush()
				}
			}
		}()
		smp, o, err := cfg.measure(ctx, s.name, cfg.command(s, w), stateDir(cfg, job+".log"), w.Out, done, 15*time.Minute)
		if err != nil {
			return smp, err
		}
		if o.records != results || o.sum != sum || o.bad != 0 {
			return smp, fmt.Errorf("output has %d results summing to %d (%d not numbers), want %d summing to %d", o.records, o.sum, o.bad, results, sum)
		}
		return smp, nil
	})
	what := fmt.Sprintf("Count per key in 10s tumbling event-time windows, %d keys, %d records (~40 bytes) over %d partitions, topic → topic, exactly-once, state on disk "+
		"(Loanflow: Pebble; Kafka Streams: RocksDB window store with EmitStrategy.onWindowClose; Flink: RocksDB state backend, incremental checkpoints). "+
		"Each result is written once, when its window closes; every run's output is checked: %d results whose counts sum to the input.", windowKeys, n, windowParts, results)
	return table("Keyed tumbling-window count", what, n, rs, windowNote(rs)), nil
}

func windowNote(rs []sideResult) string {
	return "Every side reads the same 4 partitions without repartitioning through Kafka (Kafka Streams groupByKey on an unchanged key; Loanflow KeyBy with NoRepartition, the input being partitioned by key); Flink's keyBy still exchanges records between its two subtasks inside the JVM. " +
		"Kafka Streams and Loanflow also write their window state to a changelog topic (the broker CPU column); Flink snapshots RocksDB files instead."
}
