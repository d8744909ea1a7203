package peerbench

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// The join workload's input: a table topic of tableKeys rows ("c<i>" →
// decimal i at event time baseTime), then probes ("c<(i·7919) mod
// tableKeys>" → "1" at baseTime + 1min + i/1000 ms), both over 4
// partitions by key hash; a control record "~end" per partition on both
// topics at baseTime + 10min moves every side's watermarks past the probes.
// Output: per probe, its key → row minus probe.
const (
	joinParts   = 4
	joinProbeAt = baseTime + 60_000
	joinEndAt   = baseTime + 600_000
)

func joinWorkload(ctx context.Context, cfg *Config, sides []side) (string, error) {
	tableKeys := cfg.scaled(1_000_000)
	probes := cfg.scaled(1_000_000)
	prefix := fmt.Sprintf("peers%d-join", time.Now().UnixNano()%1_000_000)
	tableTopic, in := prefix+"-table", prefix+"-probes"
	if err := createTopics(ctx, cfg.Brokers, joinParts, tableTopic, in); err != nil {
		return "", err
	}
	p, err := newProducer(cfg.Brokers)
	if err != nil {
		return "", err
	}
	defer p.close()
	for i := 0; i < tableKeys; i++ {
		p.send(ctx, tableTopic, -1, []byte("c"+strconv.Itoa(i)), []byte(strconv.Itoa(i)), baseTime)
	}
	var sum int64
	one := []byte("1")
	for i := 0; i < probes; i++ {
		k := (i * 7919) % tableKeys
		sum += int64(k) - 1
		p.send(ctx, in, -1, []byte("c"+strconv.Itoa(k)), one, joinProbeAt+int64(i/1000))
	}
	for part := int32(0); part < joinParts; part++ {
		p.send(ctx, tableTopic, part, []byte("~end"), []byte("0"), joinEndAt)
		p.send(ctx, in, part, []byte("~end"), []byte("0"), joinEndAt)
	}
	if err := p.flush(ctx); err != nil {
		return "", err
	}
	cfg.logf("join: %d table rows in %s, %d probes in %s", tableKeys, tableTopic, probes, in)
	done := func(o output) bool { return o.records >= probes && o.sum >= sum }
	rs := runSides(ctx, cfg, sides, func(s side, i int) (sample, error) {
		job := fmt.Sprintf("%s-%s-%d", prefix, slug(s.name), i)
		if err := createTopics(ctx, cfg.Brokers, joinParts, job+"-out"); err != nil {
			return sample{}, err
		}
		w := WorkerSpec{Workload: "join", Brokers: cfg.Brokers, Job: job, In: in, Table: tableTopic, Out: job + "-out",
			StateDir: stateDir(cfg, job), CommitMS: cfg.CommitInterval.Milliseconds()}
		smp, o, err := cfg.measure(ctx, s.name, cfg.command(s, w), stateDir(cfg, job+".log"), w.Out, done, 20*time.Minute)
		if err != nil {
			return smp, err
		}
		if o.records != probes || o.sum != sum || o.bad != 0 {
			return smp, fmt.Errorf("output has %d answers summing to %d (%d not numbers), want %d summing to %d", o.records, o.sum, o.bad, probes, sum)
		}
		return smp, nil
	})
	what := fmt.Sprintf("Each of %d probes joined with the row of its key valid at the probe's event time, in a %d-key table read from a topic (4 partitions, co-partitioned), topic → topic, exactly-once, state on disk "+
		"(Loanflow: TemporalJoin, Pebble; Kafka Streams: KStream-KTable join against a versioned KTable, KIP-914, RocksDB; Flink: the DataStream form of an event-time temporal join, versions and waiting probes in RocksDB keyed state, answered when the watermark passes the probe). "+
		"The time includes loading the table: every side reads both topics from the start. Every run's output is checked (%d answers, their sum).", probes, tableKeys, probes)
	return table("Stream-table join as of event time", what, probes+tableKeys, rs, joinNote), nil
}

// joinNote says how the sides differ in the work they do per probe.
const joinNote = "Where the time goes: both topics are read from the start at once, so most probes arrive before the table rows of their time. " +
	"Loanflow (like Flink) holds such a probe in state until the table side's watermark passes its time, then answers it: two state writes and two changelog records per waiting probe (waiting, answered). " +
	"Kafka Streams instead picks the next record of a task by timestamp across its input partitions (max.task.idle.ms), so a probe is joined on arrival against a versioned store already holding the rows before its time, and never waits in state. " +
	"Choosing the next input by timestamp within a task is the change that would remove Loanflow's waiting probes; it is not built yet. " +
	"Loanflow answers a released backlog in slices of 1,024 keys so that checkpoints pass between them (before that, this workload failed: one transaction held the whole backlog's answers past its timeout)."
