package devstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/connectors/postgres"
	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/buildinfo"
	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/debughttp"
	"github.com/loanflow/loanflow/jobs"
)

// Jobs are the jobs the stack runs, one worker each, in start order.
var Jobs = []string{"cache-invalidation", "portfolio", "decisions"}

// DefaultHeartbeatInterval is the CDC heartbeat interval unless
// Config.HeartbeatInterval says otherwise.
const DefaultHeartbeatInterval = 50 * time.Millisecond

// DefaultCommitIntervals are the jobs' checkpoint intervals unless
// Config.CommitIntervals says otherwise: each job's own
// (jobs.CommitIntervalOf): the decisions job commits every 100ms, since a
// decision is visible to read_committed readers only once its transaction
// commits; the others keep the engine's 200ms.
var DefaultCommitIntervals = func() map[string]time.Duration {
	m := make(map[string]time.Duration, len(Jobs))
	for _, j := range Jobs {
		m[j] = jobs.CommitIntervalOf(j)
	}
	return m
}()

// APILimits are the API limits a load test meets (see api.Config).
type APILimits struct {
	DBMaxConns     int32         // database pool; default 20
	LongPollMax    time.Duration // longest ?timeout= of the decision long-poll; default 30s
	MaxStreams     int           // concurrent SSE streams; default 1000
	SSEBuffer      int           // queued events per SSE stream; default 256
	RequestTimeout time.Duration // bound of a non-streaming request; default 10s
}

// AdminClientID is the operator client the stack bootstraps.
const AdminClientID = "dev-admin"

// Config configures the stack. Zero values take the defaults below; a
// port of 0 picks a free one. Setting DatabaseURL, RedisURL, Brokers or
// SchemaRegistryURL uses that server instead of starting one.
type Config struct {
	// Dir holds all of the stack's data. Default .loanflow/dev.
	Dir string

	// Servers the stack starts unless the matching URL below is set.
	PostgresPort int // default 55432
	RedisPort    int // default 56379
	BrokerPort   int // default 9092
	RegistryAddr string
	// DatabaseURL, RedisURL, Brokers, SchemaRegistryURL point at the
	// user's own servers. The database must allow logical replication.
	DatabaseURL       string
	RedisURL          string
	Brokers           []string
	SchemaRegistryURL string

	// Loanflow's own listen addresses.
	APIAddr        string // default 127.0.0.1:8080
	BureauAddr     string // default 127.0.0.1:8090
	CDCMetricsAddr string // default 127.0.0.1:9110
	// WorkerAdminPort is the first worker admin port; a job listens on
	// WorkerAdminPort + its offset in the port map (jobs.Job.AdminPort -
	// jobs.FirstAdminPort): decisions 9100, cache-invalidation 9101,
	// portfolio 9102 as in docker-compose. Default 9100; 0 with FreePorts.
	WorkerAdminPort int

	// FreePorts picks free ports for every listen address left empty (tests).
	FreePorts bool

	// HeartbeatInterval of the CDC reader: how often event time moves on
	// idle tables, which bounds the wait of a known customer's decision.
	// Default 50ms (heartbeats are exact and cheap: docs/design.md).
	HeartbeatInterval time.Duration
	// Partitions of the topics the stack creates. Default 6.
	Partitions int
	// Bureau configures the credit-bureau simulator; Listen is set from
	// BureauAddr.
	Bureau bureau.Config
	// LenderRateLimitPerSec and LenderRateBurst are the API's default
	// per-lender request rate and burst (a lender row may override them;
	// the operator clients share one bucket of the same size). Defaults
	// 200 and 400, the API's; a rate without a burst gets twice the rate.
	LenderRateLimitPerSec float64
	LenderRateBurst       int
	// API bounds the API's other limits a load meets; zero fields keep
	// the API's defaults.
	API APILimits
	// CommitIntervals is each job's checkpoint interval (how often its
	// outputs become visible to read_committed consumers). Jobs missing
	// from it take DefaultCommitIntervals.
	CommitIntervals map[string]time.Duration
	// Decisions tunes the decisions job (join mode, bureau calls); the zero
	// value keeps its defaults.
	Decisions jobs.DecisionsConfig
	// BrokerInProcess runs the embedded broker in this process instead of
	// a child process. Only for the negative control of the crash test:
	// a SIGKILL of the process can then tear a transaction.
	BrokerInProcess bool

	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			if c.FreePorts {
				v = "127.0.0.1:0"
			}
			*s = v
		}
	}
	if c.Dir == "" {
		c.Dir = filepath.Join(".loanflow", "dev")
	}
	if !c.FreePorts {
		defInt := func(p *int, v int) {
			if *p == 0 {
				*p = v
			}
		}
		defInt(&c.PostgresPort, 55432)
		defInt(&c.RedisPort, 56379)
		defInt(&c.BrokerPort, 9092)
		defInt(&c.WorkerAdminPort, 9100)
	}
	def(&c.RegistryAddr, "127.0.0.1:8081")
	def(&c.APIAddr, "127.0.0.1:8080")
	def(&c.BureauAddr, "127.0.0.1:8090")
	def(&c.CDCMetricsAddr, "127.0.0.1:9110")
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.Partitions == 0 {
		c.Partitions = 6
	}
	if c.LenderRateLimitPerSec > 0 && c.LenderRateBurst == 0 {
		c.LenderRateBurst = max(1, int(2*c.LenderRateLimitPerSec))
	}
	intervals := map[string]time.Duration{}
	for j, d := range DefaultCommitIntervals {
		intervals[j] = d
	}
	for j, d := range c.CommitIntervals {
		intervals[j] = d
	}
	c.CommitIntervals = intervals
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// FirstStart reports whether the stack in dir has never started: its local
// PostgreSQL has no data directory yet (initialising it takes longer).
func FirstStart(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "postgres", "data", "PG_VERSION"))
	return err != nil
}

// validate reports settings the stack cannot run with.
func (c *Config) validate() error {
	var errs []error
	for j, d := range c.CommitIntervals {
		if !slices.Contains(Jobs, j) {
			errs = append(errs, fmt.Errorf("dev: commit interval of %q: no such job (jobs: %s)", j, strings.Join(Jobs, ", ")))
		}
		if d <= 0 || d > time.Minute {
			errs = append(errs, fmt.Errorf("dev: commit interval of %s is %s: choose one within (0, 1m]", j, d))
		}
	}
	return errors.Join(errs...)
}

// Info tells where the parts of a running stack are.
type Info struct {
	Dir               string
	APIURL            string
	DatabaseURL       string
	RedisURL          string
	Brokers           []string
	SchemaRegistryURL string
	BureauURL         string
	CDCMetricsURL     string
	// Workers maps a job to its worker's admin address (host:port).
	Workers map[string]string
	// Admin holds the operator client's credentials; CredentialsFile is
	// where they are kept (mode 0600).
	Admin           api.ClientCredentials
	CredentialsFile string
	// Started lists what the stack started itself (vs the user's servers).
	Started []string
}

// stack is one run's state.
type stack struct {
	cfg     Config
	log     *slog.Logger
	info    Info
	servers []func() // stop functions, in start order
	// brokerExited is closed when the broker child ends; nil when there
	// is none.
	brokerExited <-chan struct{}
}

// Run starts the stack, calls ready once every part is up (workers own
// their tasks), and runs until ctx is cancelled or a part fails.
func Run(ctx context.Context, cfg Config, ready func(Info)) error {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	s := &stack{cfg: cfg, log: cfg.Logger, info: Info{Workers: map[string]string{}}}
	defer s.stopServers()
	if err := s.prepareDir(); err != nil {
		return err
	}
	if err := s.startServers(ctx); err != nil {
		return err
	}
	partsCtx, stopParts := context.WithCancel(ctx)
	defer stopParts()
	g, gctx := errgroup.WithContext(partsCtx)
	s.watchBroker(gctx, g)
	err := s.startParts(gctx, g)
	if err != nil {
		stopParts() // the parts already started stop too
	} else if ready != nil {
		ready(s.info)
	}
	// A part that fails while the others start cancels them: their
	// "context canceled" must not hide its error.
	if werr := g.Wait(); err == nil || (errors.Is(err, context.Canceled) && werr != nil && !errors.Is(werr, context.Canceled)) {
		err = werr
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil // a requested stop
	}
	return err
}

// watchBroker fails the stack when the broker child ends before the
// stack stops it.
func (s *stack) watchBroker(ctx context.Context, g *errgroup.Group) {
	if s.brokerExited == nil {
		return
	}
	g.Go(func() error {
		select {
		case <-s.brokerExited:
			return fmt.Errorf("dev: the embedded broker exited (see %s)", s.sub("broker.log"))
		case <-ctx.Done():
			return nil
		}
	})
}

func (s *stack) prepareDir() error {
	dir, err := filepath.Abs(s.cfg.Dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("dev: data directory: %w", err)
	}
	s.cfg.Dir, s.info.Dir = dir, dir
	s.info.CredentialsFile = filepath.Join(dir, "admin-client.json")
	return nil
}

func (s *stack) stopServers() {
	for i := len(s.servers) - 1; i >= 0; i-- {
		s.servers[i]()
	}
}

// startParts starts Loanflow's parts in dependency order; each runs in g
// and stops when gctx ends.
func (s *stack) startParts(ctx context.Context, g *errgroup.Group) error {
	if err := s.startRegistry(ctx, g); err != nil {
		return err
	}
	if err := s.startBureau(ctx, g); err != nil {
		return err
	}
	workerAddrs, err := s.workerListeners()
	if err != nil {
		return err
	}
	cdcLn, err := listen("CDC metrics", s.cfg.CDCMetricsAddr, "--cdc-metrics-addr")
	if err != nil {
		closeAll(workerAddrs)
		return err
	}
	s.info.CDCMetricsURL = "http://" + cdcLn.Addr().String() + "/metrics"
	metricsURLs := []string{s.info.CDCMetricsURL}
	for _, j := range Jobs {
		metricsURLs = append(metricsURLs, "http://"+workerAddrs[j].Addr().String()+"/metrics")
	}
	if err := s.startAPI(ctx, g, metricsURLs); err != nil {
		cdcLn.Close()
		closeAll(workerAddrs)
		return err
	}
	if err := s.startCDC(ctx, g, cdcLn); err != nil {
		closeAll(workerAddrs)
		return err
	}
	if err := s.startWorkers(ctx, g, workerAddrs); err != nil {
		return err
	}
	return s.awaitAPIReady(ctx)
}

// awaitAPIReady waits until the API's /readyz says every part can do its
// job (topics created, schemas registered, the decisions job owning its
// partitions): only then does loanflow dev print its banner.
func (s *stack) awaitAPIReady(ctx context.Context) error {
	deadline := time.Now().Add(2 * time.Minute)
	last := ""
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.info.APIURL+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = strings.TrimSpace(string(b))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dev: the API is not ready after 2m: %s", last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// listen binds addr, naming the flag that changes it when taken.
func listen(what, addr, flag string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dev: %s address %s: %w (choose another with %s)", what, addr, err, flag)
	}
	return ln, nil
}

func closeAll(lns map[string]net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// serveHTTP serves h on ln in g until ctx ends.
func serveHTTP(ctx context.Context, g *errgroup.Group, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-errc
		return nil
	})
}

// await waits for ready, the part's failure (failed closes when its Run
// returned) or ctx.
func await(ctx context.Context, what string, ready <-chan struct{}, failed <-chan struct{}, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-failed:
		return fmt.Errorf("dev: %s stopped while starting (see the log)", what)
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("dev: %s not ready after %s (see the log)", what, limit)
	}
}

// goRun runs fn in g and returns a channel closed when it returned.
func goRun(g *errgroup.Group, fn func() error) <-chan struct{} {
	done := make(chan struct{})
	g.Go(func() error {
		defer close(done)
		return fn()
	})
	return done
}

func (s *stack) startRegistry(ctx context.Context, g *errgroup.Group) error {
	if s.cfg.SchemaRegistryURL != "" {
		s.info.SchemaRegistryURL = s.cfg.SchemaRegistryURL
		return nil
	}
	r, err := schemaregistry.New(schemaregistry.Config{Brokers: s.info.Brokers, Listen: s.cfg.RegistryAddr,
		ReplicationFactor: -1, Logger: s.log.With("part", "registry")})
	if err != nil {
		return err
	}
	failed := goRun(g, func() error { return wrap("schema registry", r.Run(ctx)) })
	if err := await(ctx, "schema registry", r.Ready(), failed, time.Minute); err != nil {
		return err
	}
	s.info.SchemaRegistryURL = r.URL()
	s.info.Started = append(s.info.Started, "schema registry")
	return nil
}

func (s *stack) startBureau(ctx context.Context, g *errgroup.Group) error {
	bc := s.cfg.Bureau
	bc.Listen = s.cfg.BureauAddr
	bc.Logger = s.log.With("part", "bureau")
	b, err := bureau.New(bc)
	if err != nil {
		return err
	}
	failed := goRun(g, func() error { return wrap("bureau simulator", b.Run(ctx)) })
	if err := await(ctx, "bureau simulator", b.Ready(), failed, 30*time.Second); err != nil {
		return err
	}
	s.info.BureauURL = b.URL()
	return nil
}

// PIIConfig is where the stack in dir keeps its PII keys: a local KEK file
// wrapping the data and blind-index keysets (`loanflow load --direct`
// seals applications with them).
func PIIConfig(dir string) pii.Config {
	keys := filepath.Join(dir, "keys")
	return pii.Config{KEKURI: pii.LocalKMSPrefix + filepath.Join(keys, "kek.json"),
		DataKeysetPath: filepath.Join(keys, "pii-data.json"), IndexKeysetPath: filepath.Join(keys, "pii-index.json")}
}

func (s *stack) startAPI(ctx context.Context, g *errgroup.Group, metricsURLs []string) error {
	keys := PIIConfig(s.cfg.Dir)
	if err := os.MkdirAll(filepath.Join(s.cfg.Dir, "keys"), 0o700); err != nil {
		return err
	}
	if err := pii.Init(ctx, keys); err != nil {
		return fmt.Errorf("dev: PII keys: %w", err)
	}
	ln, err := listen("API", s.cfg.APIAddr, "--api-addr")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	apiDSN := s.apiRoleDSN(ctx)
	srv, err := api.New(ctx, api.Config{DevIssuer: true, Addr: addr, PublicURL: "http://" + addr, DatabaseURL: apiDSN, MigrationsDatabaseURL: s.info.DatabaseURL,
		RedisURL: s.info.RedisURL, KafkaBrokers: s.info.Brokers, SchemaRegistryURL: s.info.SchemaRegistryURL,
		RateLimitPerSec: s.cfg.LenderRateLimitPerSec, RateLimitBurst: s.cfg.LenderRateBurst,
		DBMaxConns: s.cfg.API.DBMaxConns, LongPollMax: s.cfg.API.LongPollMax, MaxStreams: s.cfg.API.MaxStreams,
		SSEBuffer: s.cfg.API.SSEBuffer, RequestTimeout: s.cfg.API.RequestTimeout,
		PII: keys, OperatorMetricsURLs: metricsURLs, ReadyGroups: []string{kafka.Group("decisions")}, OperatorGroups: jobGroups(),
		Logger: s.log.With("part", "api")}, nil)
	if err != nil {
		ln.Close()
		return err
	}
	s.info.APIURL = "http://" + addr
	g.Go(func() error {
		defer srv.Close()
		return wrap("api", srv.Serve(ctx, ln))
	})
	creds, err := s.adminCredentials(ctx, srv)
	if err != nil {
		return err
	}
	s.info.Admin = creds
	return nil
}

// adminCredentials bootstraps the operator client on first start and
// reads it back from the credentials file afterwards.
func (s *stack) adminCredentials(ctx context.Context, srv *api.Server) (api.ClientCredentials, error) {
	path := s.info.CredentialsFile
	creds, created, err := srv.EnsureAdminClient(ctx, AdminClientID)
	if err != nil {
		return creds, err
	}
	if created {
		b, err := json.MarshalIndent(creds, "", "  ")
		if err != nil {
			return creds, err
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
			return creds, fmt.Errorf("dev: saving the admin credentials: %w", err)
		}
		return creds, nil
	}
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &creds)
	}
	if err != nil || creds.ClientSecret == "" {
		return creds, fmt.Errorf("dev: admin client %s exists but its credentials file %s is unreadable (%v): "+
			"delete %s to start the stack over", AdminClientID, path, err, s.cfg.Dir)
	}
	return creds, nil
}

func (s *stack) startCDC(ctx context.Context, g *errgroup.Group, metrics net.Listener) error {
	reg := newRegistry()
	tables := postgres.LoanflowTables() // no PII columns, not audit_log (issue 9)
	r, err := postgres.NewReader(postgres.Config{Name: "loanflow_cdc", DatabaseURL: s.info.DatabaseURL,
		Brokers: s.info.Brokers, SchemaRegistryURL: s.info.SchemaRegistryURL, Tables: tables,
		Views: []postgres.ViewConfig{postgres.Customer360View()}, EnsureReplicaIdentityFull: true,
		TopicPartitions: s.cfg.Partitions, HeartbeatInterval: s.cfg.HeartbeatInterval,
		Registerer: reg, Logger: s.log.With("part", "cdc")})
	if err != nil {
		metrics.Close()
		return err
	}
	serveHTTP(ctx, g, metrics, debughttp.Handler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	failed := goRun(g, func() error { return wrap("cdc", r.Run(ctx)) })
	// The decisions job joins against customer_360: wait until the reader
	// created its topics, so the job finds them with the reader's
	// partition count rather than creating them itself.
	return s.waitTopics(ctx, failed, "customer_360", "cdc.public.loans")
}

func (s *stack) waitTopics(ctx context.Context, failed <-chan struct{}, topics ...string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.info.Brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		td, err := adm.ListTopics(ctx, topics...)
		if err == nil {
			missing := 0
			for _, t := range topics {
				if d, ok := td[t]; !ok || d.Err != nil {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
		}
		select {
		case <-failed:
			return errors.New("dev: the CDC reader stopped while starting (see the log)")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dev: the CDC reader has not created %v after 2m (see the log)", topics)
		}
	}
}

func (s *stack) workerListeners() (map[string]net.Listener, error) {
	out := map[string]net.Listener{}
	for _, j := range Jobs {
		addr := "127.0.0.1:0"
		if s.cfg.WorkerAdminPort != 0 {
			addr = fmt.Sprintf("127.0.0.1:%d", s.cfg.WorkerAdminPort+adminOffset(j))
		}
		ln, err := listen("worker admin of "+j, addr, "--worker-admin-port")
		if err != nil {
			closeAll(out)
			return nil, err
		}
		out[j] = ln
		s.info.Workers[j] = ln.Addr().String()
	}
	return out, nil
}

// jobGroups are the consumer groups of the stack's jobs: the operator page
// shows these, not the throwaway groups of tools and tests.
func jobGroups() []string {
	out := make([]string, len(Jobs))
	for i, j := range Jobs {
		out[i] = kafka.Group(j)
	}
	return out
}

// adminOffset is job's place in the admin port map.
func adminOffset(job string) int {
	j, ok := jobs.Get(job)
	if !ok || j.AdminPort == 0 {
		panic("devstack: job " + job + " has no admin port") // a job added to Jobs without one
	}
	return j.AdminPort - jobs.FirstAdminPort
}

func (s *stack) startWorkers(ctx context.Context, g *errgroup.Group, lns map[string]net.Listener) error {
	type started struct {
		w      *kafka.Worker
		failed <-chan struct{}
	}
	var ws []started
	for _, name := range Jobs {
		reg := newRegistry()
		wlog := s.log.With("part", "job") // the worker adds job
		b, err := jobs.Builder(name, jobs.Env{Brokers: s.info.Brokers, SchemaRegistryURL: s.info.SchemaRegistryURL,
			RedisURL: s.info.RedisURL, DatabaseURL: s.info.DatabaseURL, BureauURL: s.info.BureauURL,
			Logger: wlog.With("job", name), Registerer: reg, Decisions: s.cfg.Decisions})
		if err == nil {
			var w *kafka.Worker
			w, err = kafka.NewWorker(b, kafka.Config{Brokers: s.info.Brokers, WorkerID: "dev-" + name,
				StateDir: filepath.Join(s.cfg.Dir, "state", name), Delivery: kafka.ExactlyOnce, CommitInterval: s.cfg.CommitIntervals[name],
				MinCommitInterval: jobs.MinCommitIntervalOf(name, s.cfg.CommitIntervals[name]),
				DefaultPartitions: int32(s.cfg.Partitions), AdminAddr: s.info.Workers[name], Registerer: reg, Logger: wlog})
			if err == nil {
				serveHTTP(ctx, g, lns[name], kafka.AdminHandler(w, reg))
				delete(lns, name)
				failed := goRun(g, func() error { return s.runWorker(ctx, name, w) })
				ws = append(ws, started{w, failed})
			}
		}
		if err != nil {
			closeAll(lns)
			return fmt.Errorf("dev: job %s: %w", name, err)
		}
	}
	for i, w := range ws {
		if err := await(ctx, "job "+Jobs[i], w.w.Ready(), w.failed, 3*time.Minute); err != nil {
			return err
		}
	}
	return nil
}

// runWorker runs a job's worker. A worker stopped through its admin
// endpoint (loanflow job stop) ends without stopping the stack, even when
// its stop failed: the error is logged, the other parts keep running, and
// the job can be started again with loanflow job run. Only a worker that
// fails on its own takes the stack down.
func (s *stack) runWorker(ctx context.Context, name string, w *kafka.Worker) error {
	err := w.Run(ctx)
	if ctx.Err() == nil && w.StopRequested() {
		if err != nil {
			s.log.Error("job stop failed; the rest of the stack keeps running", "job", name, "err", err)
		} else {
			s.log.Info("job stopped on request; the rest of the stack keeps running", "job", name)
		}
		return nil
	}
	return wrap("job "+name, err)
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.Collector())
	return reg
}

// wrap names the part in its error; a stop on cancel is no error.
func wrap(part string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%s: %w", part, err)
}

// Summary is what `loanflow dev` prints once the stack is up.
func (i Info) Summary() string {
	var b strings.Builder
	row := func(k, v string) { fmt.Fprintf(&b, "  %-26s %s\n", k, v) }
	fmt.Fprintf(&b, "Loanflow is running. Data: %s (logs in loanflow.log)\n\n", i.Dir)
	row("API, dev OAuth2 issuer", i.APIURL)
	row("Portfolio dashboard", i.APIURL+"/dashboard")
	row("Operator page", i.APIURL+"/operator")
	row("Schema registry", i.SchemaRegistryURL)
	row("Credit bureau simulator", i.BureauURL)
	row("CDC metrics", i.CDCMetricsURL)
	for _, j := range Jobs {
		row("Job "+j, "http://"+i.Workers[j]+"  (/metrics /status /readyz /debug/pprof/)")
	}
	row("PostgreSQL", i.DatabaseURL)
	row("Redis", i.RedisURL)
	row("Kafka brokers", strings.Join(i.Brokers, ","))
	fmt.Fprintf(&b, "\n  Admin client %s: secret in %s\n\n", i.Admin.ClientID, i.CredentialsFile)
	fmt.Fprintf(&b, "Try it from another terminal:\n")
	fmt.Fprintf(&b, "  loanflow demo --api %s --credentials %s\n", i.APIURL, i.CredentialsFile)
	fmt.Fprintf(&b, "  loanflow job status decisions --brokers %s\n", strings.Join(i.Brokers, ","))
	fmt.Fprintf(&b, "  loanflow decisions tail --brokers %s --schema-registry %s\n", strings.Join(i.Brokers, ","), i.SchemaRegistryURL)
	fmt.Fprintf(&b, "Stop with Ctrl-C; run it again to resume, delete %s to start over.\n", i.Dir)
	return b.String()
}

// apiRoleDSN migrates the database as its owner and returns a DSN of the
// login role loanflow_api_dev, a member of loanflow_api (migration 00005):
// the API then owns nothing and cannot disable the audit triggers. When
// the role cannot be made or used (a --database-url whose user may not
// create roles, or that needs passwords), it logs why and returns the
// owner's DSN.
func (s *stack) apiRoleDSN(ctx context.Context) string {
	owner := s.info.DatabaseURL
	fallback := func(why string, err error) string {
		s.log.Warn("the API runs as the database owner: "+why, "err", err)
		return owner
	}
	if _, err := migrations.Up(ctx, owner); err != nil {
		return fallback("migrating", err)
	}
	conn, err := pgx.Connect(ctx, owner)
	if err != nil {
		return fallback("connecting", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'loanflow_api_dev') THEN
			CREATE ROLE loanflow_api_dev LOGIN IN ROLE loanflow_api;
		END IF; END $$`); err != nil {
		return fallback("creating the role loanflow_api_dev", err)
	}
	u, err := url.Parse(owner)
	if err != nil {
		return fallback("parsing the database URL", err)
	}
	u.User = url.User("loanflow_api_dev")
	dsn := u.String()
	test, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fallback("connecting as loanflow_api_dev", err)
	}
	test.Close(ctx)
	return dsn
}
