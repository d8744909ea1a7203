package apibench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/api/auth"
)

// Config configures a benchmark run.
type Config struct {
	Server    *api.Server
	URL       string // base URL the server listens on
	RedisAddr string // the server's Redis, for the raw GET baseline
	// PgBenchDir holds the pgbench binary; PgBenchDSN is a scratch
	// database for it. Empty skips the pgbench baseline.
	PgBenchDir string
	PgBenchDSN string

	LookupRate     int           // req/s; default 5000
	LookupDuration time.Duration // per phase (hits, misses); default 60s
	UpdateRate     int           // req/s; default 1000
	UpdateDuration time.Duration // default 60s
	MaxInFlight    int           // open-loop concurrency bound; default 512
	Customers      int           // default 2000
	Loans          int           // default 500
	// LoadCommand, when set, runs the open-loop phases (the /healthz
	// floor, hits, misses, updates) in a separate load-generator process:
	// this command with a LoadSpec as JSON on stdin, which writes
	// StartedLine and then a LoadResult as JSON on stdout (`loanflow
	// bench-api-load`). Empty: from this process.
	LoadCommand []string
	// ProfileDir, when set, receives a CPU profile of this process (the
	// server) over each open-loop phase: api-<op>-cpu.pprof.
	ProfileDir string
	// Client is the load generator's HTTP client: ClientRaw (default) or
	// ClientNetHTTP (net/http's, for comparing the two).
	Client string
}

// The load generator's HTTP clients (Config.Client, LoadSpec.Client).
const (
	ClientRaw     = "raw"
	ClientNetHTTP = "net/http"
)

// useClient makes the client the phases send their requests with.
func (b *bench) useClient(name string) error {
	switch name {
	case "", ClientRaw:
		raw, err := newRawClient(b.cfg.URL, b.cfg.MaxInFlight, 10*time.Second)
		if err != nil {
			return err
		}
		b.raw = raw
	case ClientNetHTTP:
		tr := &http.Transport{MaxIdleConns: b.cfg.MaxInFlight, MaxIdleConnsPerHost: b.cfg.MaxInFlight}
		b.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	default:
		return fmt.Errorf("apibench: unknown load-generator client %q (%s or %s)", name, ClientRaw, ClientNetHTTP)
	}
	return nil
}

// closeClients closes the idle connections of the phase's client.
func (b *bench) closeClients() {
	if b.raw != nil {
		b.raw.close()
	}
	if b.client != nil {
		b.client.CloseIdleConnections()
	}
}

func (c *Config) setDefaults() {
	if c.LookupRate == 0 {
		c.LookupRate = 5000
	}
	if c.LookupDuration == 0 {
		c.LookupDuration = 60 * time.Second
	}
	if c.UpdateRate == 0 {
		c.UpdateRate = 1000
	}
	if c.UpdateDuration == 0 {
		c.UpdateDuration = 60 * time.Second
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 512
	}
	if c.Customers == 0 {
		c.Customers = 2000
	}
	if c.Loans == 0 {
		c.Loans = 500
	}
}

// Latency summarizes one measured operation.
type Latency struct {
	Name     string
	Rate     int // offered req/s (0 for closed-loop baselines)
	Sent     int
	Errors   int
	Dropped  int // not sent: MaxInFlight reached
	P50, P99 time.Duration
	Max      time.Duration
	Goal     time.Duration // p99 goal (0: baseline)
	GoalMet  bool
	Note     string
	CPU      string // CPU per request by process (open-loop runs)
	Machine  string // CPU cores in use during the run, ours and others'
	Server   string // p99 as the server measured it (handler time, histogram bucket)
	// FirstError is the first failed request's error, if any.
	FirstError string
}

// Report is the outcome of Run.
type Report struct {
	Results     []Latency
	PgBenchTPS  float64
	PgBenchNote string
}

// Run seeds data, then measures cache hits, cache misses, loan updates and
// the baselines.
func Run(ctx context.Context, cfg Config) (Report, error) {
	cfg.setDefaults()
	var rep Report
	b, err := seed(ctx, &cfg)
	if err != nil {
		return rep, err
	}
	defer b.closeClients()
	if err := b.warm(ctx); err != nil {
		return rep, err
	}
	phase := func(name, op string, rate int, d, goal time.Duration, fn func(context.Context) error) Latency {
		if cfg.ProfileDir != "" && name != "warm-up" {
			defer profilePhase(cfg.ProfileDir, op)()
		}
		if len(cfg.LoadCommand) > 0 {
			return b.remote(ctx, name, op, rate, d, goal, op == "miss")
		}
		if op == "miss" {
			defer b.startJanitor(ctx)()
		}
		return b.openLoop(ctx, name, rate, d, goal, fn)
	}
	floor := phase("baseline: GET /healthz (load generator + HTTP floor)", "healthz", cfg.LookupRate, cfg.LookupDuration, 0, b.healthz)
	c0 := b.counters()
	hits := phase("credit lookup (cache hit)", "hit", cfg.LookupRate, cfg.LookupDuration, 5*time.Millisecond, b.lookupHit)
	c1 := b.counters()
	hits.Note = joinNonEmpty("; ", c1.sub(c0).String(), hits.Note)
	misses := phase("credit lookup (cache miss)", "miss", cfg.LookupRate, cfg.LookupDuration, 20*time.Millisecond, b.lookupMiss)
	misses.Note = joinNonEmpty("; ", b.counters().sub(c1).String(), misses.Note)
	rget := b.closedLoop(ctx, "baseline: go-redis GET", 20000, b.redisGet)
	psel := b.closedLoop(ctx, "baseline: PostgreSQL point select", 20000, b.pgSelect)
	// Unmeasured warm-up: the first second of updates on a fresh server
	// pays for growing the connection pool and preparing statements on each
	// new connection (in 10s runs on a fresh server, most requests over 20ms
	// fell in the first 0.25-1.5s).
	phase("warm-up", "update", cfg.UpdateRate, min(2*time.Second, cfg.UpdateDuration/5), 0, b.update)
	upd := phase("loan update (PATCH)", "update", cfg.UpdateRate, cfg.UpdateDuration, 25*time.Millisecond, b.update)
	rep.Results = []Latency{floor, hits, misses, rget, psel, upd}
	rep.PgBenchTPS, rep.PgBenchNote = pgbench(ctx, cfg)
	return rep, nil
}

// profilePhase starts a CPU profile of this process into
// dir/api-<op>-cpu.pprof and returns its stop; a profile that cannot start
// (another one runs) is skipped, since the figures do not depend on it.
func profilePhase(dir, op string) func() {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, "api-"+op+"-cpu.pprof"))
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	// Allocations over the phase: the heap profile's cumulative counts at
	// its start and end (go tool pprof -sample_index=alloc_space
	// -diff_base api-<op>-allocs-start.pprof api-<op>-allocs.pprof).
	writeAllocs(filepath.Join(dir, "api-"+op+"-allocs-start.pprof"))
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		writeAllocs(filepath.Join(dir, "api-"+op+"-allocs.pprof"))
	}
}

func writeAllocs(path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup("allocs").WriteTo(f, 0)
}

type bench struct {
	cfg    Config
	client *http.Client
	raw    *rawClient // the load generator's client (Generate), or nil: client
	token  string
	rdb    *redis.Client
	pool   *pgxpool.Pool
	ids    []string
	loans  chan loanState
	cpu    cpuProbe
	hitSeq atomic.Int64 // round-robin over ids for hits
	missMu sync.Mutex
	next   int // round-robin over ids for misses (guarded by missMu)
}

type loanState struct {
	id      string
	version int64
	cents   int64
}

func seed(ctx context.Context, cfg *Config) (*bench, error) {
	s := cfg.Server
	admin := auth.Principal{Subject: "bench", Scopes: map[string]bool{auth.ScopeAdmin: true}}
	lender := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	if err := s.CreateLender(ctx, admin, api.NewLender{LenderID: lender, Name: "Benchmark", RateLimitPerSec: ptr(1e6), RateBurst: ptr(1000000)}); err != nil {
		return nil, err
	}
	creds, err := s.CreateClient(ctx, admin, api.NewClient{ClientID: lender + "-client", LenderID: lender,
		Scopes: []string{auth.ScopeCreditRead, auth.ScopeLoansWrite}})
	if err != nil {
		return nil, err
	}
	tok, err := s.IssueToken(ctx, creds.ClientID, creds.ClientSecret)
	if err != nil {
		return nil, err
	}
	b := &bench{cfg: *cfg, token: tok,
		rdb: redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, PoolSize: 64}), pool: s.Pool(), loans: make(chan loanState, cfg.Loans)}
	if err := b.useClient(cfg.Client); err != nil {
		return nil, err
	}
	_, port, _ := strings.Cut(cfg.RedisAddr, ":")
	b.cpu = cpuProbe{db: s.Pool().Config().ConnConfig.Database, redisPort: port, clkTck: 100} // USER_HZ
	for i := 0; i < cfg.Customers; i++ {
		id := fmt.Sprintf("%s-c%d", lender, i)
		if err := s.CreateCustomer(ctx, admin, api.NewCustomer{CustomerID: id, Name: "Bench Person", SSN: fmt.Sprintf("%09d", 100000000+i),
			CreditLimit: "100000000000.00", RiskTier: "MEDIUM", Score: 700, LenderID: lender}); err != nil {
			return nil, err
		}
		b.ids = append(b.ids, id)
	}
	return b, b.seedLoans(ctx)
}

func ptr[T any](v T) *T { return &v }

func (b *bench) seedLoans(ctx context.Context) error {
	for i := 0; i < b.cfg.Loans; i++ {
		body := fmt.Sprintf(`{"customer_id":%q,"amount":"100000.00","currency":"USD","term_months":12}`, b.ids[i%len(b.ids)])
		resp, err := b.call(ctx, "POST", "/v1/loans", body, "Idempotency-Key", fmt.Sprintf("seed-%d", i))
		if err != nil {
			return err
		}
		var l api.Loan
		if err := json.Unmarshal(resp, &l); err != nil {
			return fmt.Errorf("apibench: seeding loan: %w", err)
		}
		b.loans <- loanState{id: l.LoanID, version: l.Version, cents: 10000000}
	}
	return nil
}

var errStatus = errors.New("apibench: unexpected status")

func (b *bench) call(ctx context.Context, method, path, body string, hdr ...string) ([]byte, error) {
	if b.raw != nil {
		status, out, err := b.raw.do(ctx, method, path, append([]string{"Authorization", "Bearer " + b.token}, hdr...), body)
		if err == nil && status >= 300 {
			err = fmt.Errorf("%w %d: %s", errStatus, status, out)
		}
		return out, err
	}
	var rd io.Reader
	if body != "" {
		rd = bytes.NewBufferString(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.cfg.URL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+b.token)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode >= 300 {
		err = fmt.Errorf("%w %d: %s", errStatus, resp.StatusCode, out)
	}
	return out, err
}

func (b *bench) pick() string {
	b.missMu.Lock()
	defer b.missMu.Unlock()
	b.next++
	return b.ids[b.next%len(b.ids)]
}

// warm looks every profile up once, so the hit phase finds each cached.
func (b *bench) warm(ctx context.Context) error {
	for _, id := range b.ids {
		if _, err := b.call(ctx, "GET", "/v1/credit-profiles/"+id+"?purpose=ACCOUNT_REVIEW", ""); err != nil {
			return fmt.Errorf("apibench: warming the cache: %w", err)
		}
	}
	return nil
}

// lookupHit asks for the cached profiles in turn (all of them, so
// concurrent requests rarely share one id and every hit is its own GET).
func (b *bench) lookupHit(ctx context.Context) error {
	id := b.ids[int(b.hitSeq.Add(1))%len(b.ids)]
	_, err := b.call(ctx, "GET", "/v1/credit-profiles/"+id+"?purpose=ACCOUNT_REVIEW", "")
	return err
}

// lookupMiss asks for the profiles in turn; the janitor deleted each
// cache entry shortly before its turn.
func (b *bench) lookupMiss(ctx context.Context) error {
	_, err := b.call(ctx, "GET", "/v1/credit-profiles/"+b.pick()+"?purpose=ACCOUNT_REVIEW", "")
	return err
}

// janitorAhead is how many lookups ahead of the miss phase the janitor
// deletes cache entries: far enough that a request never catches up with
// it, close enough that an entry was last looked up a whole turn (len(ids)
// lookups) earlier.
const janitorAhead = 400

// startJanitor deletes the cache entries of the next lookups of the miss
// phase in batches (one DEL every few milliseconds), so the lookups miss
// without a per-request DEL in the measured path. The server's counters
// in the report show how many lookups did miss.
func (b *bench) startJanitor(ctx context.Context) (stop func()) {
	return b.startJanitorAt(ctx, func() int {
		b.missMu.Lock()
		defer b.missMu.Unlock()
		return b.next
	})
}

// startJanitorAt is startJanitor following the position pos reports (a
// separate load generator's schedule).
func (b *bench) startJanitorAt(ctx context.Context, pos func() int) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	ahead := min(janitorAhead, len(b.ids)/2) // an id must not recur within the window
	deleted := 0                             // highest sequence number deleted
	cur := pos()
	b.deleteRange(ctx, cur, cur+ahead)
	deleted = cur + ahead
	go func() {
		defer close(done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if to := pos() + ahead; to > deleted {
				b.deleteRange(ctx, deleted, to)
				deleted = to
			}
		}
	}()
	return func() { cancel(); <-done }
}

// deleteRange deletes the entries of miss-phase sequence numbers (from, to].
func (b *bench) deleteRange(ctx context.Context, from, to int) {
	keys := make([]string, 0, to-from)
	for i := from + 1; i <= to; i++ {
		keys = append(keys, "profile:"+b.ids[i%len(b.ids)])
	}
	b.rdb.Del(ctx, keys...)
}

// cacheCounters are the server's lookup counters.
type cacheCounters struct {
	hits, misses, errors, bypass, dbLoads float64
	auditBatches, auditRows               float64
	// round trips and the calls they carried, by batched path
	// (loanflow_api_profile_batches_total, _batched_calls_total)
	batches, batched map[string]float64
}

func (c cacheCounters) sub(o cacheCounters) cacheCounters {
	d := cacheCounters{c.hits - o.hits, c.misses - o.misses, c.errors - o.errors, c.bypass - o.bypass, c.dbLoads - o.dbLoads,
		c.auditBatches - o.auditBatches, c.auditRows - o.auditRows, map[string]float64{}, map[string]float64{}}
	for k, v := range c.batches {
		d.batches[k] = v - o.batches[k]
	}
	for k, v := range c.batched {
		d.batched[k] = v - o.batched[k]
	}
	return d
}

func (c cacheCounters) String() string {
	s := fmt.Sprintf("server: %.0f cache hits, %.0f misses, %.0f PostgreSQL loads", c.hits, c.misses, c.dbLoads)
	if c.errors+c.bypass > 0 {
		s += fmt.Sprintf(" (%.0f Redis errors/timeouts, %.0f lookups bypassed Redis while its breaker was open)", c.errors, c.bypass)
	}
	if c.auditBatches > 0 {
		s += fmt.Sprintf("; audit journal: %.0f rows in %.0f commits (%.1f per commit)", c.auditRows, c.auditBatches, c.auditRows/c.auditBatches)
	}
	var paths []string
	for k, v := range c.batches {
		if v > 0 {
			paths = append(paths, k)
		}
	}
	slices.Sort(paths)
	for i, k := range paths {
		if i == 0 {
			s += "; calls per round trip:"
		} else {
			s += ","
		}
		s += fmt.Sprintf(" %s %.1f", k, c.batched[k]/c.batches[k])
	}
	return s
}

func (b *bench) counters() cacheCounters {
	c := cacheCounters{batches: map[string]float64{}, batched: map[string]float64{}}
	mfs, err := b.cfg.Server.Registry().Gather()
	if err != nil {
		return c
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "loanflow_api_profile_db_loads_total":
				c.dbLoads += m.GetCounter().GetValue()
			case "loanflow_api_profile_batches_total", "loanflow_api_profile_batched_calls_total":
				for _, l := range m.GetLabel() {
					if l.GetName() == "path" {
						if mf.GetName() == "loanflow_api_profile_batches_total" {
							c.batches[l.GetValue()] += m.GetCounter().GetValue()
						} else {
							c.batched[l.GetValue()] += m.GetCounter().GetValue()
						}
					}
				}
			case "loanflow_api_audit_batches_total":
				c.auditBatches += m.GetCounter().GetValue()
			case "loanflow_api_audit_rows_total":
				c.auditRows += m.GetCounter().GetValue()
			case "loanflow_api_profile_cache_total":
				for _, l := range m.GetLabel() {
					if l.GetName() != "result" {
						continue
					}
					v := m.GetCounter().GetValue()
					switch l.GetValue() {
					case "hit":
						c.hits += v
					case "miss":
						c.misses += v
					case "error":
						c.errors += v
					case "bypass":
						c.bypass += v
					}
				}
			}
		}
	}
	return c
}

// healthz is the cheapest request the server answers (no auth, no
// storage): what the load generator, net/http and the machine cost alone.
func (b *bench) healthz(ctx context.Context) error {
	_, err := b.call(ctx, "GET", "/healthz", "")
	return err
}

func (b *bench) redisGet(ctx context.Context) error {
	return b.rdb.Get(ctx, "profile:"+b.ids[0]).Err()
}

func (b *bench) pgSelect(ctx context.Context) error {
	var s string
	return b.pool.QueryRow(ctx, "SELECT risk_tier FROM customers WHERE customer_id = $1", b.pick()).Scan(&s)
}

func (b *bench) update(ctx context.Context) error {
	var l loanState
	select {
	case l = <-b.loans:
	default:
		return errNoLoan
	}
	l.cents--
	body := fmt.Sprintf(`{"balance":"%d.%02d"}`, l.cents/100, l.cents%100)
	out, err := b.call(ctx, "PATCH", "/v1/loans/"+l.id, body, "If-Match", `"`+strconv.FormatInt(l.version, 10)+`"`)
	if err == nil {
		var nl api.Loan
		if json.Unmarshal(out, &nl) == nil {
			l.version = nl.Version
		}
	} else {
		l.cents++
	}
	b.loans <- l
	return err
}

var errNoLoan = errors.New("apibench: every loan has an update in flight")

// openLoop sends rate req/s for d, each on its schedule, and measures
// latency from the scheduled send time.
func (b *bench) openLoop(ctx context.Context, name string, rate int, d time.Duration, goal time.Duration, op func(context.Context) error) Latency {
	h0, a0, w0 := b.serverHist(), b.histOf("loanflow_api_audit_commit_seconds"), b.histOf("loanflow_api_audit_wait_seconds")
	cpu0 := b.cpu.sample()
	var resent0 int64
	if b.raw != nil {
		resent0 = b.raw.resent.Load()
	}
	res, lat := b.drive(ctx, rate, d, op, nil)
	res.Name, res.Goal = name, goal
	if b.raw != nil {
		if n := b.raw.resent.Load() - resent0; n > 0 {
			res.Note = fmt.Sprintf("%d GETs resent after the server closed an idle connection", n)
		}
	}
	used := b.cpu.sample().sub(cpu0)
	res.CPU, res.Machine = used.perRequest(res.Sent), used.machine()
	res.Server = b.serverHist().sub(h0).p99()
	if a := b.histOf("loanflow_api_audit_commit_seconds").sub(a0); a.total > 0 {
		res.Server += "; " + a.quantile("audit commit", 50) + ", " + a.quantile("audit commit", 99) + ", " + a.quantile("audit commit", 99.9)
	}
	if a := b.histOf("loanflow_api_audit_wait_seconds").sub(w0); a.total > 0 {
		res.Server += "; " + a.quantile("audit wait", 50) + ", " + a.quantile("audit wait", 99) + ", " + a.quantile("audit wait", 99.9)
	}
	summarize(&res, lat)
	return res
}

// drive sends rate req/s of op for d, each on its schedule, and returns the
// counts and the latencies measured from the scheduled send times.
func (b *bench) drive(ctx context.Context, rate int, d time.Duration, op func(context.Context) error, started func(time.Time)) (Latency, []time.Duration) {
	n := int(d.Seconds() * float64(rate))
	lat := make([]time.Duration, 0, n)
	var mu sync.Mutex
	res := Latency{Rate: rate}
	sem := make(chan struct{}, b.cfg.MaxInFlight)
	var wg sync.WaitGroup
	start := time.Now()
	if started != nil {
		started(start)
	}
	interval := time.Second / time.Duration(rate)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		select {
		case sem <- struct{}{}:
		default:
			res.Dropped++
			continue
		}
		res.Sent++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := op(ctx)
			el := time.Since(at)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if res.Errors++; res.FirstError == "" {
					res.FirstError = err.Error()
				}
				return
			}
			lat = append(lat, el)
		}()
	}
	wg.Wait()
	return res, lat
}

func (b *bench) closedLoop(ctx context.Context, name string, n int, op func(context.Context) error) Latency {
	res := Latency{Name: name}
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		t := time.Now()
		if err := op(ctx); err != nil && !errors.Is(err, redis.Nil) {
			res.Errors++
			continue
		}
		lat = append(lat, time.Since(t))
		res.Sent++
	}
	summarize(&res, lat)
	return res
}

func summarize(res *Latency, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	res.P50 = lat[len(lat)/2]
	res.P99 = lat[len(lat)*99/100]
	res.Max = lat[len(lat)-1]
	res.GoalMet = res.Goal == 0 || (res.P99 < res.Goal && res.Errors == 0 && res.Dropped == 0)
}

var tpsRe = regexp.MustCompile(`tps = ([0-9.]+)`)

// pgbench runs the built-in simple-update script for UpdateDuration.
func pgbench(ctx context.Context, cfg Config) (float64, string) {
	if cfg.PgBenchDir == "" || cfg.PgBenchDSN == "" {
		return 0, "pgbench skipped (no binary directory or scratch database)"
	}
	bin := filepath.Join(cfg.PgBenchDir, "pgbench")
	if out, err := exec.CommandContext(ctx, bin, "-i", "-s", "1", "-q", cfg.PgBenchDSN).CombinedOutput(); err != nil {
		return 0, fmt.Sprintf("pgbench -i failed: %v: %s", err, out)
	}
	secs := strconv.Itoa(max(1, int(cfg.UpdateDuration.Seconds())))
	out, err := exec.CommandContext(ctx, bin, "-b", "simple-update", "-c", "8", "-j", "2", "-T", secs, cfg.PgBenchDSN).CombinedOutput()
	if err != nil {
		return 0, fmt.Sprintf("pgbench failed: %v: %s", err, out)
	}
	m := tpsRe.FindSubmatch(out)
	if m == nil {
		return 0, "pgbench printed no tps"
	}
	tps, _ := strconv.ParseFloat(string(m[1]), 64)
	return tps, "pgbench -b simple-update -c 8 -j 2 -T " + secs
}

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}

// Markdown renders the report as a table.
func (r Report) Markdown() string {
	var b bytes.Buffer
	b.WriteString("| operation | offered req/s | sent | errors | dropped | p50 | p99 | max | p99 goal | met | note |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, l := range r.Results {
		goal := "baseline"
		if l.Goal > 0 {
			goal = "< " + l.Goal.String()
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %v | %v | %v | %s | %v | %s |\n", l.Name, l.Rate, l.Sent, l.Errors, l.Dropped,
			l.P50.Round(time.Microsecond), l.P99.Round(time.Microsecond), l.Max.Round(time.Microsecond), goal, l.GoalMet,
			joinNonEmpty("; ", l.Note, l.Server, l.CPU, l.Machine))
	}
	for _, l := range r.Results {
		if l.FirstError != "" {
			fmt.Fprintf(&b, "\nfirst error of %s: %.300s\n", l.Name, l.FirstError)
		}
	}
	fmt.Fprintf(&b, "\npgbench simple-update: %.0f TPS (%s)\n", r.PgBenchTPS, r.PgBenchNote)
	return b.String()
}

// hist is the server's request-duration histogram summed over routes:
// cumulative counts per bucket upper bound (seconds).
type hist struct {
	bounds []float64
	counts []uint64
	total  uint64
}

func (h hist) sub(o hist) hist {
	if len(o.counts) != len(h.counts) {
		return h
	}
	out := hist{bounds: h.bounds, counts: make([]uint64, len(h.counts)), total: h.total - o.total}
	for i := range h.counts {
		out.counts[i] = h.counts[i] - o.counts[i]
	}
	return out
}

// p99 names the bucket holding the 99th percentile.
func (h hist) p99() string { return h.quantile("server-measured", 99) }

// quantile names the bucket holding the q-th percentile: "what pQ in (a, b]".
func (h hist) quantile(what string, q float64) string {
	if h.total == 0 {
		return ""
	}
	tenths := uint64(math.Round(q * 10)) // integer ranks: p99.9 of 41,000 is the 40,959th
	want := (h.total*tenths + 999) / 1000
	lower := 0.0
	for i, c := range h.counts {
		if c >= want {
			return fmt.Sprintf("%s p%g in (%v, %v]", what, q, secs(lower), secs(h.bounds[i]))
		}
		lower = h.bounds[i]
	}
	return fmt.Sprintf("%s p%g > %v", what, q, secs(lower))
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// serverHist reads loanflow_api_request_duration_seconds (all routes: a
// phase sends one kind of request; the seeding and warm-up are over).
func (b *bench) serverHist() hist { return b.histOf("loanflow_api_request_duration_seconds") }

// histOf sums the histogram name over its label sets.
func (b *bench) histOf(name string) hist {
	var h hist
	mfs, err := b.cfg.Server.Registry().Gather()
	if err != nil {
		return h
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			hg := m.GetHistogram()
			if h.bounds == nil {
				for _, bk := range hg.GetBucket() {
					h.bounds = append(h.bounds, bk.GetUpperBound())
				}
				h.counts = make([]uint64, len(h.bounds))
			}
			for i, bk := range hg.GetBucket() {
				if i < len(h.counts) {
					h.counts[i] += bk.GetCumulativeCount()
				}
			}
			h.total += hg.GetSampleCount()
		}
	}
	return h
}
