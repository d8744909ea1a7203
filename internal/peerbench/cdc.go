package peerbench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

// PostgresEnv is what the CDC workload needs: a durable cluster (fsync and
// synchronous_commit on) with wal_level=logical, the schema registry the
// Loanflow reader writes Avro schemas to, and the loanflow binary.
type PostgresEnv struct {
	// CreateDatabase creates a database and returns its URL.
	CreateDatabase func(ctx context.Context, name string) (string, error)
	// Port is the cluster's TCP port on 127.0.0.1 (user postgres, trust).
	Port int
	// BinDir holds pg_recvlogical.
	BinDir string
	// DataDir is PGDATA (its postmaster.pid names the server, whose CPU
	// time, walsenders included, is reported).
	DataDir string
	// RegistryURL is the schema registry of the Loanflow reader.
	RegistryURL string
	// LoanflowCLI runs the loanflow binary with args (`cdc run`).
	LoanflowCLI func(args ...string) *exec.Cmd
}

// The CDC workload's tables: accounts and payments have fixed-width
// columns only; loans has a text column stored out of line (TOAST, ~2.3 kB
// per row) and REPLICA IDENTITY FULL.
var cdcTables = []string{"accounts", "loans", "payments"}

const cdcSchema = `
CREATE TABLE accounts (id bigint PRIMARY KEY, owner bigint NOT NULL, balance_cents bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE loans (id bigint PRIMARY KEY, account_id bigint NOT NULL, status int NOT NULL, notes text NOT NULL);
ALTER TABLE loans ALTER COLUMN notes SET STORAGE EXTERNAL;
ALTER TABLE loans REPLICA IDENTITY FULL;
CREATE TABLE payments (id bigint PRIMARY KEY, loan_id bigint NOT NULL, amount_cents bigint NOT NULL, paid_at timestamptz NOT NULL DEFAULT now());
CREATE PUBLICATION peers_pub FOR TABLE accounts, loans, payments;
`

// cdcTxn is one generated transaction: 100 changes (30+20+25 inserts, 10+10
// updates, 5 deletes) over the three tables; the loans updates leave the
// TOASTed notes unchanged.
const cdcTxnChanges = 100

func cdcTxn(j int64) string {
	a, l, p := j*30, j*20, j*25
	return fmt.Sprintf(`INSERT INTO accounts (id, owner, balance_cents) SELECT g, g %% 1000, 0 FROM generate_series(%[1]d, %[2]d) g;
INSERT INTO loans SELECT g, g, 0, 'note ' || repeat(md5(g::text), 70) FROM generate_series(%[3]d, %[4]d) g;
INSERT INTO payments (id, loan_id, amount_cents) SELECT g, g, 100 FROM generate_series(%[5]d, %[6]d) g;
UPDATE accounts SET balance_cents = balance_cents + 1, updated_at = now() WHERE id BETWEEN %[1]d AND %[7]d;
UPDATE loans SET status = status + 1 WHERE id BETWEEN %[3]d AND %[8]d;
DELETE FROM payments WHERE id BETWEEN %[5]d AND %[9]d;`, a, a+29, l, l+19, p, p+24, a+9, l+9, p+4)
}

type cdcBench struct {
	cfg   *Config
	pg    *PostgresEnv
	dsn   string
	db    string
	conn  *pgx.Conn
	nextJ int64
}

func (b *cdcBench) generate(ctx context.Context, conn *pgx.Conn, changes int, rate int, onCommit func(total int, at time.Time)) error {
	t0 := time.Now()
	for done := 0; done < changes; done += cdcTxnChanges {
		if _, err := conn.Exec(ctx, cdcTxn(b.nextJ)); err != nil {
			return fmt.Errorf("cdc load: %w", err)
		}
		b.nextJ++
		if onCommit != nil {
			onCommit(done+cdcTxnChanges, time.Now())
		}
		if rate > 0 {
			if ahead := time.Duration(float64(done+cdcTxnChanges)/float64(rate)*float64(time.Second)) - time.Since(t0); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
	return nil
}

func (b *cdcBench) exec(ctx context.Context, sql string, args ...any) error {
	_, err := b.conn.Exec(ctx, sql, args...)
	return err
}

func (b *cdcBench) insertLSN(ctx context.Context) (string, error) {
	var s string
	err := b.conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s)
	return s, err
}

// pgCPU is the PostgreSQL server's CPU seconds: the postmaster and its
// children, live (from their /proc/PID/stat) and reaped (the postmaster's
// cutime and cstime).
func (b *cdcBench) pgCPU() float64 {
	raw, err := os.ReadFile(filepath.Join(b.pg.DataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(raw), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	total, _ := CPUSeconds(pm)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pm {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(st), ')')
		f := strings.Fields(string(st[i+1:]))
		if len(f) > 2 && f[1] == strconv.Itoa(pm) {
			v, _ := CPUSeconds(pid)
			total += v
		}
	}
	return total
}

// cdcCount reads the side's three topics read_committed and records, at
// each poll, the number of change records seen (heartbeats and null
// values left out).
type cdcCount struct {
	mu      sync.Mutex
	n       int
	points  []countPoint
	byTopic map[string]int
}

type countPoint struct {
	n  int
	at time.Time
}

func (c *cdcCount) get() int { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

func (c *cdcCount) run(ctx context.Context, brokers []string, topics []string, ready chan<- struct{}) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topics...), kgo.AllowAutoTopicCreation(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(20*time.Millisecond), kgo.MetadataMinAge(100*time.Millisecond), kgo.MetadataMaxAge(time.Second))
	if err != nil {
		close(ready)
		return err
	}
	defer cl.Close()
	close(ready)
	for ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		now := time.Now()
		k := 0
		c.mu.Lock()
		if c.byTopic == nil {
			c.byTopic = map[string]int{}
		}
		c.mu.Unlock()
		fs.EachRecord(func(r *kgo.Record) {
			if r.Value == nil || string(r.Key) == "__loanflow_heartbeat" {
				return
			}
			for _, h := range r.Headers {
				if h.Key == "loanflow.heartbeat" {
					return
				}
			}
			k++
			c.mu.Lock()
			c.byTopic[r.Topic]++
			c.mu.Unlock()
		})
		if k > 0 {
			c.mu.Lock()
			c.n += k
			c.points = append(c.points, countPoint{c.n, now})
			c.mu.Unlock()
		}
	}
	return nil
}

// at is when the count first reached n.
func (c *cdcCount) at(n int) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, _ := slices.BinarySearchFunc(c.points, n, func(p countPoint, n int) int { return p.n - n })
	if i == len(c.points) {
		return time.Time{}, false
	}
	return c.points[i].at, true
}

// cdcSide is Loanflow's reader or Debezium's engine.
type cdcSide struct {
	name  string
	start func(run string, slot string) (*exec.Cmd, []string, error) // command, its topics
}

func cdcWorkload(ctx context.Context, cfg *Config, dbz *Built) (string, error) {
	pg := cfg.Postgres
	b := &cdcBench{cfg: cfg, pg: pg, db: fmt.Sprintf("peercdc%d", time.Now().UnixNano()%1_000_000)}
	var err error
	if b.dsn, err = pg.CreateDatabase(ctx, b.db); err != nil {
		return "", err
	}
	if b.conn, err = pgx.Connect(ctx, b.dsn); err != nil {
		return "", err
	}
	defer b.conn.Close(context.WithoutCancel(ctx))
	if err := b.exec(ctx, "SET synchronous_commit = on"); err != nil {
		return "", err
	}
	if _, err := b.conn.Exec(ctx, cdcSchema); err != nil {
		return "", fmt.Errorf("cdc schema: %w", err)
	}
	var version string
	if err := b.conn.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return "", err
	}
	changes := cfg.scaled(500_000) / cdcTxnChanges * cdcTxnChanges
	rateSecs := max(3, cfg.scaled(20))
	const rate = 5000
	tables := make([]string, len(cdcTables))
	for i, t := range cdcTables {
		tables[i] = "public." + t
	}

	sides := []cdcSide{{name: "Loanflow (`loanflow cdc run`)", start: func(run, slot string) (*exec.Cmd, []string, error) {
		cfgPath := stateDir(cfg, run+".yaml")
		var tl strings.Builder
		for _, t := range tables {
			fmt.Fprintf(&tl, "  - table: %s\n", t)
		}
		y := fmt.Sprintf("name: %s\ndatabase_url: %s\nbrokers: [%s]\nschema_registry_url: %s\nslot: %s\npublication: peers_pub\nsnapshot: never\ntopic_prefix: %s\ntables:\n%s",
			run, b.dsn, strings.Join(cfg.Brokers, ", "), pg.RegistryURL, slot, run, tl.String())
		if err := os.WriteFile(cfgPath, []byte(y), 0o644); err != nil {
			return nil, nil, err
		}
		topics := make([]string, len(tables))
		for i, t := range tables {
			topics[i] = run + "." + t
		}
		return pg.LoanflowCLI("cdc", "run", "--config", cfgPath), topics, nil
	}}}
	if dbz != nil {
		sides = append(sides, cdcSide{name: dbz.Version, start: func(run, slot string) (*exec.Cmd, []string, error) {
			dir := stateDir(cfg, run)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, nil, err
			}
			args := map[string]string{"brokers": strings.Join(cfg.Brokers, ","), "app": run, "port": strconv.Itoa(pg.Port), "db": b.db,
				"slot": slot, "publication": "peers_pub", "tables": strings.Join(tables, ","), "prefix": run, "state": dir,
				"commit_ms": strconv.FormatInt(cfg.CommitInterval.Milliseconds(), 10)}
			topics := make([]string, len(tables))
			for i, t := range tables {
				topics[i] = run + "." + t
			}
			return dbz.Command("cdc", args), topics, nil
		}})
	}

	type cdcRes struct {
		drain    []sample
		lat      [][]time.Duration
		pgCPU    []float64
		err      error
		recvOnly bool
	}
	res := make([]cdcRes, len(sides)+1) // last: pg_recvlogical
	res[len(sides)].recvOnly = true
	nonce := time.Now().UnixNano() % 1_000_000
	for r := 0; r < cfg.Runs; r++ {
		// One slot per side, created before the backlog, so every side
		// drains the same WAL.
		slots := make([]string, len(sides)+1)
		for i := range slots {
			slots[i] = fmt.Sprintf("peers_%d_%d_%d", nonce, r, i)
			if err := b.exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slots[i]); err != nil {
				return "", fmt.Errorf("creating slot %s: %w", slots[i], err)
			}
		}
		cfg.logf("cdc run %d: generating %d changes", r+1, changes)
		if err := b.generate(ctx, b.conn, changes, 0, nil); err != nil {
			return "", err
		}
		end, err := b.insertLSN(ctx)
		if err != nil {
			return "", err
		}
		// The floor: pg_recvlogical decoding the backlog to /dev/null,
		// timed from its start to its exit at the backlog's end.
		{
			cmd := exec.CommandContext(ctx, filepath.Join(pg.BinDir, "pg_recvlogical"), "--dbname="+b.dsn, "--slot="+slots[len(sides)], "--start",
				"--endpos="+end, "--file=/dev/null", "--no-loop", "--option=proto_version=1", "--option=publication_names=peers_pub")
			pg0 := b.pgCPU()
			t0 := time.Now()
			out, err := cmd.CombinedOutput()
			if err != nil {
				return "", fmt.Errorf("pg_recvlogical: %w\n%s", err, out)
			}
			wall := time.Since(t0)
			cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			res[len(sides)].drain = append(res[len(sides)].drain, sample{wall: wall, cpu: cpu.Seconds()})
			res[len(sides)].pgCPU = append(res[len(sides)].pgCPU, b.pgCPU()-pg0)
			cfg.logf("cdc run %d: pg_recvlogical %.2fs", r+1, wall.Seconds())
		}
		// Every side drains before any latency phase adds WAL.
		for i, s := range sides {
			if res[i].err != nil {
				continue
			}
			smp, pgc, err := b.drain(ctx, s, fmt.Sprintf("peers%dcdc%d%c", nonce, r, 'a'+i), slots[i], changes)
			if err != nil {
				cfg.logf("cdc run %d: %s: %v", r+1, s.name, err)
				res[i].err = err
				continue
			}
			cfg.logf("cdc run %d: %s drained in %.2fs (%.2f CPU s)", r+1, s.name, smp.wall.Seconds(), smp.cpu)
			res[i].drain = append(res[i].drain, smp)
			res[i].pgCPU = append(res[i].pgCPU, pgc)
		}
		for _, sl := range slots {
			_ = b.exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", sl)
		}
		for i, s := range sides {
			if res[i].err != nil {
				continue
			}
			lat, err := b.latency(ctx, s, fmt.Sprintf("peers%dlat%d%c", nonce, r, 'a'+i), fmt.Sprintf("peers_%d_%d_lat%d", nonce, r, i), rate, rateSecs)
			if err != nil {
				cfg.logf("cdc run %d: %s: %v", r+1, s.name, err)
				res[i].err = err
				continue
			}
			cfg.logf("cdc run %d: %s p50/p99 at %d/s: %v / %v", r+1, s.name, rate, pct(lat, 50), pct(lat, 99))
			res[i].lat = append(res[i].lat, lat)
		}
	}

	var sb strings.Builder
	fmt.Fprintf(&sb, "\n### PostgreSQL CDC into Kafka\n\nA backlog of %d changes (transactions of %d: 75%% inserts, 20%% updates, 5%% deletes) over 3 tables, one (loans) with a ~2.3 kB text column stored out of line (TOAST) and REPLICA IDENTITY FULL, its updates leaving that column unchanged; "+
		"PostgreSQL %s with fsync and synchronous_commit on. Each side drains it from its own pgoutput slot, created before the backlog, timed from its process start to the moment a read_committed consumer has seen the last change in Kafka "+
		"(pg_recvlogical, the floor: from its start to its exit at the backlog's end LSN, decoding to /dev/null). "+
		"Loanflow writes Avro (schema registry) in Kafka transactions (exactly-once, commit_interval 50ms, its default); Debezium writes its JSON envelopes without inline schemas through a KafkaProducer with default settings, marking offsets processed after the sends are acknowledged (at-least-once, its default; offset flush every %s). "+
		"Then commit → Kafka latency with %d changes/s offered for %ds (a transaction of 100 changes every 20ms): from the PostgreSQL COMMIT's return to the moment the consumer has seen as many changes as were committed by then. "+
		"\"PostgreSQL CPU\" is the server's (walsenders decoding included) over the drain.\n\n", changes, cdcTxnChanges, strings.Fields(version)[0], cfg.CommitInterval, rate, rateSecs)
	sb.WriteString("| side | drain wall s (median) | changes/s | CPU s / M changes | PostgreSQL CPU s / M | drain wall ÷ Loanflow's | p50 / p99 at 5k/s | runs (drain wall s) |\n|---|---:|---:|---:|---:|---:|---|---|\n")
	names := append(func() []string {
		n := make([]string, len(sides))
		for i, s := range sides {
			n[i] = s.name
		}
		return n
	}(), "pg_recvlogical (floor, no Kafka)")
	var lf float64
	if res[0].err == nil {
		lf = sideResult{samples: res[0].drain}.wall()
	}
	m := float64(changes) / 1e6
	for i, r := range res {
		if r.err != nil {
			fmt.Fprintf(&sb, "| %s | failed: %s | | | | | | |\n", names[i], oneLine(r.err.Error()))
			continue
		}
		sr := sideResult{samples: r.drain}
		ratio := "—"
		if i != 0 && lf > 0 {
			ratio = fmt.Sprintf("%.2f", sr.wall()/lf)
		}
		lat := "—"
		if !r.recvOnly {
			var all []time.Duration
			for _, l := range r.lat {
				all = append(all, l...)
			}
			lat = fmt.Sprintf("%v / %v", pct(all, 50), pct(all, 99))
		}
		walls := make([]string, len(r.drain))
		for j, s := range r.drain {
			walls[j] = fmt.Sprintf("%.1f", s.wall.Seconds())
		}
		fmt.Fprintf(&sb, "| %s | %.2f | %.0f | %.2f | %.2f | %s | %s | %s |\n", names[i], sr.wall(), float64(changes)/sr.wall(), sr.cpu()/m, median(r.pgCPU)/m, ratio, lat, strings.Join(walls, ", "))
	}
	sb.WriteString("\nLoanflow is slower than pg_recvlogical, the floor, by construction: pg_recvlogical only receives the decoded stream and writes it to /dev/null; the reader also decodes pgoutput into rows, encodes Avro, registers schemas and writes and commits Kafka transactions (with its position). " +
		"Debezium runs with its defaults, among them the connector's poll.interval.ms of 500ms (how long it waits for new events in each poll), which is in line with its commit → Kafka latency; its drain time and CPU include the JVM's start and JIT compilation, as every side is timed from its process start.\n")
	return sb.String(), nil
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(100 * time.Microsecond)
}

// drain runs one side on slot until it has written changes changes.
func (b *cdcBench) drain(ctx context.Context, s cdcSide, run, slot string, changes int) (sample, float64, error) {
	cmd, topics, err := s.start(run, slot)
	if err != nil {
		return sample{}, 0, err
	}
	var cnt cdcCount
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{})
	go func() { _ = cnt.run(wctx, b.cfg.Brokers, topics, ready) }()
	<-ready
	pg0 := b.pgCPU()
	p, err := startProcess(s.name, cmd, stateDir(b.cfg, run+".log"))
	if err != nil {
		return sample{}, 0, err
	}
	defer p.kill()
	if err := b.waitCount(ctx, p, &cnt, changes, 20*time.Minute); err != nil {
		return sample{}, 0, err
	}
	last, _ := cnt.at(changes)
	cpu, err := p.cpu()
	if err != nil {
		return sample{}, 0, err
	}
	smp := sample{wall: last.Sub(p.start), cpu: cpu}
	pgc := b.pgCPU() - pg0
	if n := cnt.get(); n != changes {
		cnt.mu.Lock()
		defer cnt.mu.Unlock()
		return smp, 0, fmt.Errorf("%d change records for %d changes (by topic %v; want 40%%, 30%%, 30%%)", n, changes, cnt.byTopic)
	}
	return smp, pgc, nil
}

func (b *cdcBench) waitCount(ctx context.Context, p *process, cnt *cdcCount, want int, timeout time.Duration) error {
	done := make(chan struct{})
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		defer close(done)
		for cnt.get() < want && wctx.Err() == nil {
			time.Sleep(2 * time.Millisecond)
		}
	}()
	if err := p.waitOrExit(wctx, done); err != nil {
		return fmt.Errorf("%w (%d of %d changes seen)", err, cnt.get(), want)
	}
	if cnt.get() < want {
		return fmt.Errorf("%d of %d changes seen after %s", cnt.get(), want, timeout)
	}
	return nil
}

// latency starts one side on a new slot, waits until a first transaction
// is through, then offers changes at rate for secs seconds and returns the
// commit → Kafka latency of each transaction.
func (b *cdcBench) latency(ctx context.Context, s cdcSide, run, slot string, rate, secs int) ([]time.Duration, error) {
	if err := b.exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot); err != nil {
		return nil, fmt.Errorf("creating slot %s: %w", slot, err)
	}
	defer func() {
		_ = b.exec(context.WithoutCancel(ctx), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", slot)
	}()
	cmd, topics, err := s.start(run, slot)
	if err != nil {
		return nil, err
	}
	var cnt cdcCount
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{})
	go func() { _ = cnt.run(wctx, b.cfg.Brokers, topics, ready) }()
	<-ready
	p, err := startProcess(s.name, cmd, stateDir(b.cfg, run+".log"))
	if err != nil {
		return nil, err
	}
	defer p.kill()
	gen, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return nil, err
	}
	defer gen.Close(context.WithoutCancel(ctx))
	if _, err := gen.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		return nil, err
	}
	// Warm-up: one transaction through before the clock starts.
	if err := b.generate(ctx, gen, cdcTxnChanges, 0, nil); err != nil {
		return nil, err
	}
	if err := b.waitCount(ctx, p, &cnt, cdcTxnChanges, 5*time.Minute); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	type commit struct {
		n  int
		at time.Time
	}
	var commits []commit
	if err := b.generate(ctx, gen, rate*secs, rate, func(total int, at time.Time) {
		commits = append(commits, commit{cdcTxnChanges + total, at})
	}); err != nil {
		return nil, err
	}
	want := cdcTxnChanges + (rate*secs+cdcTxnChanges-1)/cdcTxnChanges*cdcTxnChanges
	if err := b.waitCount(ctx, p, &cnt, want, 5*time.Minute); err != nil {
		return nil, fmt.Errorf("latency phase: %w", err)
	}
	lat := make([]time.Duration, 0, len(commits))
	for _, c := range commits {
		if at, ok := cnt.at(c.n); ok {
			lat = append(lat, at.Sub(c.at))
		}
	}
	return lat, nil
}
