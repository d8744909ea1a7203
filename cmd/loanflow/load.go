package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/api/pii"
)

func init() { addCommand(newLoadCmd) }

// loadConfig configures `loanflow load`.
type loadConfig struct {
	apiURL, credentials, dir   string
	brokers                    []string
	registry                   string
	rate                       float64
	duration                   time.Duration
	count                      int
	lenders, customers         int
	knownRatio                 float64
	terminals                  int
	output, lenderPrefix       string
	drain, requestTimeout      time.Duration
	direct                     bool
	applications, decisionsTop string // topics
	submissions                string // file of every submission's outcome
}

func (c loadConfig) validate() error {
	var errs []error
	bad := func(ok bool, msg string) {
		if !ok {
			errs = append(errs, errors.New(msg))
		}
	}
	bad(c.rate > 0, "--rate must be positive")
	bad(c.count > 0 || c.duration > 0, "give --count or a positive --duration")
	bad(c.lenders >= 1 && c.lenders <= 1000, "--lenders must be within 1..1000")
	bad(c.customers >= 0 && c.customers <= 100_000, "--customers must be within 0..100000")
	bad(c.knownRatio >= 0 && c.knownRatio <= 1, "--known-ratio must be within 0..1")
	bad(c.knownRatio == 0 || c.customers > 0, "--known-ratio above 0 needs --customers")
	bad(c.terminals >= 1 && c.terminals <= 1000, "--terminals must be within 1..1000")
	bad(c.output == "table" || c.output == "json", "--output must be table or json")
	bad(c.drain >= 0, "--drain must not be negative")
	return errors.Join(errs...)
}

func newLoadCmd() *cobra.Command {
	var cfg loadConfig
	var brokers string
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Point-of-sale load: submit applications at a rate, match their decisions, report latency",
		Long: `Drives a running stack (loanflow dev) like a fleet of point-of-sale terminals.
With the admin client it creates --lenders lenders (or reuses them) with a
point-of-sale client each, and --customers customers per lender; then it
submits applications through POST /v1/loan-applications from --terminals
concurrent clients at --rate per second, --known-ratio of them naming a known
customer, for --duration or --count applications. It reads loan_decisions
itself (read_committed, Avro through the schema registry), matches decisions
to submissions by application id, prints progress every second on stderr and
a summary at the end: submitted, accepted (202), rejected (by status and
reason), decided, missing, duplicated, and submission-to-decision latency per
decision basis. After the last submission it waits up to --drain for the
decisions still missing.

A submission without a 202 (an error status, or no answer because the stack
is down) is not accepted and never retried; an accepted one must be decided
exactly once. The exit status is 1 when an accepted application has no
decision or an application has two.

The API limits each lender to 200 requests/s (burst 400) by default; above
that submissions are rejected with 429 (rate-limited). Raise the limit with
loanflow dev --lender-rate-limit N (the operator clients that create the
customers share it), or spread the load over more --lenders.

--direct produces Avro applications straight to loan_applications as a
Kafka-native terminal would, sealed with the stack's PII keys (in --dir);
accepted then means acknowledged by the broker.`,
		Example: `  loanflow load --rate 100 --duration 1m
  loanflow load --rate 500 --lenders 4 --count 20000 --output json
  loanflow load --direct --rate 1000 --duration 30s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.brokers = splitList(brokers)
			if err := cfg.validate(); err != nil {
				return err
			}
			s, err := runLoad(cmd.Context(), cfg, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := s.write(cmd.OutOrStdout(), cfg.output); err != nil {
				return err
			}
			return s.err()
		},
	}
	devDir := envOr("LOANFLOW_DEV_DIR", filepath.Join(".loanflow", "dev"))
	f := cmd.Flags()
	f.Float64Var(&cfg.rate, "rate", 50, "applications per second")
	f.DurationVar(&cfg.duration, "duration", 30*time.Second, "how long to submit (unless --count)")
	f.IntVar(&cfg.count, "count", 0, "how many applications to submit (instead of --duration)")
	f.IntVar(&cfg.lenders, "lenders", 1, "lenders to spread the applications over (created, or reused, as PREFIX-1..N)")
	f.IntVar(&cfg.customers, "customers", 100, "known customers per lender (created, or reused)")
	f.Float64Var(&cfg.knownRatio, "known-ratio", 0.8, "share of applications naming a known customer")
	f.IntVar(&cfg.terminals, "terminals", 8, "concurrent submitting clients")
	f.StringVar(&cfg.apiURL, "api", envOr("LOANFLOW_API_URL", "http://127.0.0.1:8080"), "API base URL (env LOANFLOW_API_URL)")
	f.StringVar(&cfg.credentials, "credentials", filepath.Join(devDir, "admin-client.json"), "admin client credentials file written by loanflow dev")
	f.StringVar(&cfg.dir, "dir", devDir, "data directory of the stack: its PII keys seal --direct applications (env LOANFLOW_DEV_DIR)")
	f.StringVar(&brokers, "brokers", envOr("LOANFLOW_BROKERS", "127.0.0.1:9092"), "Kafka seed brokers, comma-separated (env LOANFLOW_BROKERS)")
	f.StringVar(&cfg.registry, "schema-registry", envOr("LOANFLOW_SCHEMA_REGISTRY", "http://127.0.0.1:8081"), "schema registry URL (env LOANFLOW_SCHEMA_REGISTRY)")
	f.StringVar(&cfg.output, "output", "table", "summary format: table or json")
	f.DurationVar(&cfg.drain, "drain", 30*time.Second, "how long to wait for decisions after the last submission")
	f.DurationVar(&cfg.requestTimeout, "request-timeout", 15*time.Second, "bound of one submission")
	f.StringVar(&cfg.lenderPrefix, "lender-prefix", "load-bank", "prefix of the lenders' ids")
	f.BoolVar(&cfg.direct, "direct", false, "produce to loan_applications directly instead of through the API")
	f.StringVar(&cfg.applications, "applications-topic", "loan_applications", "topic of --direct applications")
	f.StringVar(&cfg.decisionsTop, "decisions-topic", "loan_decisions", "topic the decisions are read from")
	f.StringVar(&cfg.submissions, "submissions", "", "write every submission to this file as a line: application id, then accepted or rejected and the reason (tab-separated)")
	return cmd
}

// loadLender is one lender of the run: its id, point-of-sale client and
// known customers.
type loadLender struct {
	id        string
	pos       *apiClient // nil with --direct
	customers []string
}

// loadRun is one run of `loanflow load`.
type loadRun struct {
	cfg      loadConfig
	run      string // application ids are run + "-" + sequence
	lenders  []loadLender
	codecs   api.Codecs
	keys     *pii.Keyring // --direct
	producer *kgo.Client  // --direct
	tracker  *loadTracker
	start    time.Time
	record   *submissionLog // --submissions; nil without
}

func runLoad(ctx context.Context, cfg loadConfig, progress io.Writer) (loadSummary, error) {
	l := &loadRun{cfg: cfg, run: "ld-" + randomHex(5), tracker: newLoadTracker()}
	defer l.close()
	if cfg.submissions != "" {
		var err error
		if l.record, err = createSubmissionLog(cfg.submissions); err != nil {
			return loadSummary{}, err
		}
	}
	if err := l.setup(ctx, progress); err != nil {
		return loadSummary{}, err
	}
	l.start = time.Now()
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	reader, err := l.decisionReader()
	if err != nil {
		return loadSummary{}, err
	}
	defer reader.Close()
	var g errgroup.Group
	g.Go(func() error { return l.readDecisions(readCtx, reader) })
	g.Go(func() error {
		defer stopReading()
		return l.drive(ctx, progress)
	})
	if err := g.Wait(); err != nil && ctx.Err() == nil {
		return loadSummary{}, err
	}
	if err := l.record.close(); err != nil {
		return loadSummary{}, err
	}
	mode := "api"
	if cfg.direct {
		mode = "direct"
	}
	return l.tracker.summary(mode, l.run), nil
}

func (l *loadRun) close() {
	if l.producer != nil {
		l.producer.Close()
	}
	_ = l.record.close()
}

// drive submits, then drains, printing progress every second.
func (l *loadRun) drive(ctx context.Context, progress io.Writer) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.submitAll(ctx)
	}()
	var drainUntil time.Time
	for {
		ticked := false
		select {
		case <-ctx.Done():
			<-done
			return nil
		case <-done:
			done = nil // submitting ended: drain
			drainUntil = time.Now().Add(l.cfg.drain)
		case <-tick.C:
			fmt.Fprintln(progress, l.tracker.progress(time.Since(l.start)))
			ticked = true
		}
		if done == nil && (l.tracker.pending() == 0 || time.Now().After(drainUntil)) {
			if !ticked {
				fmt.Fprintln(progress, l.tracker.progress(time.Since(l.start)))
			}
			return nil
		}
	}
}

// submitAll paces submissions at the rate over the terminals.
func (l *loadRun) submitAll(ctx context.Context) {
	jobs := make(chan int, l.cfg.terminals)
	var wg sync.WaitGroup
	for t := range l.cfg.terminals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range jobs {
				l.submit(ctx, t, seq)
			}
		}()
	}
	defer wg.Wait()
	defer close(jobs)
	end := l.start.Add(l.cfg.duration)
	for seq := 0; l.cfg.count == 0 || seq < l.cfg.count; seq++ {
		at := l.start.Add(time.Duration(float64(seq) / l.cfg.rate * float64(time.Second)))
		if l.cfg.count == 0 && !at.Before(end) {
			return
		}
		if sleepCtx(ctx, time.Until(at)) != nil {
			return
		}
		select {
		case jobs <- seq: // blocks while every terminal is busy
		case <-ctx.Done():
			return
		}
	}
}

// loadApplication is what one submission sends.
type loadApplication struct {
	id, terminal, name, ssn, amount string
	lender                          *loadLender
	customer                        *string
}

func (l *loadRun) newApplication(terminal, seq int) loadApplication {
	ln := &l.lenders[seq%len(l.lenders)]
	a := loadApplication{id: fmt.Sprintf("%s-%d", l.run, seq), terminal: fmt.Sprintf("load-term-%d", terminal),
		name: fmt.Sprintf("Applicant %d", seq), ssn: randomSSN(), lender: ln,
		amount: fmt.Sprintf("%d.%02d", 100+rand.IntN(5900), rand.IntN(100))}
	if len(ln.customers) > 0 && rand.Float64() < l.cfg.knownRatio {
		c := ln.customers[rand.IntN(len(ln.customers))]
		a.customer, a.ssn = &c, customerSSN(c)
	}
	return a
}

func (l *loadRun) submit(ctx context.Context, terminal, seq int) {
	a := l.newApplication(terminal, seq)
	l.tracker.sending(a.id, a.customer != nil)
	var accepted bool
	var reason string
	if l.cfg.direct {
		accepted, reason = l.produce(ctx, a)
	} else {
		accepted, reason = l.post(ctx, a)
	}
	l.tracker.answered(a.id, accepted, reason)
	l.record.add(a.id, accepted, reason)
}

// post submits through the API. A 401 (token expired, or the dev issuer
// restarted with new keys) is answered before anything is queued, so it is
// retried once with a new token; nothing else is retried.
func (l *loadRun) post(ctx context.Context, a loadApplication) (bool, string) {
	body := map[string]any{"application_id": a.id, "pos_terminal_id": a.terminal, "amount": a.amount, "currency": "USD",
		"applicant": map[string]string{"name": a.name, "ssn": a.ssn}}
	if a.customer != nil {
		body["customer_id"] = *a.customer
	}
	resp, err := a.lender.pos.do(ctx, http.MethodPost, "/v1/loan-applications", body)
	if err == nil && resp.status == http.StatusUnauthorized {
		if err = a.lender.pos.refresh(ctx); err == nil {
			resp, err = a.lender.pos.do(ctx, http.MethodPost, "/v1/loan-applications", body)
		}
	}
	switch {
	case err != nil:
		return false, "no response: " + errorKind(err)
	case resp.status == http.StatusAccepted:
		return true, ""
	}
	reason := "HTTP " + strconv.Itoa(resp.status)
	if t := resp.problemType(); t != "" {
		reason += " " + t
	}
	return false, reason
}

// errorKind names a transport error without its addresses, so reasons
// group: "connection refused", "EOF", "timeout".
func errorKind(err error) string {
	var ne interface{ Timeout() bool }
	switch s := err.Error(); {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(s, "connection refused"):
		return "connection refused"
	case strings.Contains(s, "connection reset"):
		return "connection reset"
	case strings.HasSuffix(s, "EOF"):
		return "EOF"
	case strings.Contains(s, ": "):
		return s[strings.LastIndex(s, ": ")+2:]
	default:
		return s
	}
}
