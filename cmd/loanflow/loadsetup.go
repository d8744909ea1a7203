package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/internal/devstack"
	"github.com/loanflow/loanflow/schemas"
)

// setup creates (or reuses) the lenders, their point-of-sale clients and
// customers, and opens the codecs (and, with --direct, the keys and the
// producer).
func (l *loadRun) setup(ctx context.Context, progress io.Writer) error {
	admin, err := readAdminCredentials(l.cfg.credentials)
	if err != nil {
		return err
	}
	hc := newHTTPClient(l.cfg.requestTimeout, l.cfg.terminals)
	op, err := login(ctx, hc, l.cfg.apiURL, admin.ClientID, admin.ClientSecret)
	if err != nil {
		return err
	}
	if l.codecs, err = api.NewAvroCodecs(ctx, l.cfg.registry, l.cfg.applications, l.cfg.decisionsTop, "portfolio_metrics"); err != nil {
		return fmt.Errorf("%w (pass --schema-registry)", err)
	}
	for i := 1; i <= l.cfg.lenders; i++ {
		ln := loadLender{id: fmt.Sprintf("%s-%d", l.cfg.lenderPrefix, i)}
		if err := ensureLender(ctx, op, api.NewLender{LenderID: ln.id, Name: fmt.Sprintf("Load Bank %d", i)}); err != nil {
			return err
		}
		if !l.cfg.direct {
			if ln.pos, err = newPOSClient(ctx, op, ln.id, fmt.Sprintf("load-pos-%s-%d", l.run, i)); err != nil {
				return err
			}
		}
		for j := range l.cfg.customers {
			ln.customers = append(ln.customers, fmt.Sprintf("%s-c%d", ln.id, j))
		}
		l.lenders = append(l.lenders, ln)
	}
	start := time.Now()
	if err := l.createCustomers(ctx, op); err != nil {
		return err
	}
	fmt.Fprintf(progress, "run %s: %d lenders (%s-1..%d), %d customers each (ready in %s); submitting %s\n",
		l.run, l.cfg.lenders, l.cfg.lenderPrefix, l.cfg.lenders, l.cfg.customers, time.Since(start).Round(time.Millisecond), l.plan())
	if l.cfg.direct {
		return l.openDirect(ctx)
	}
	return nil
}

func (l *loadRun) plan() string {
	what := fmt.Sprintf("for %s", l.cfg.duration)
	if l.cfg.count > 0 {
		what = fmt.Sprintf("%d applications", l.cfg.count)
	}
	via := "through " + l.cfg.apiURL
	if l.cfg.direct {
		via = "to " + l.cfg.applications
	}
	return fmt.Sprintf("%s at %g/s from %d terminals %s, %.0f%% known", what, l.cfg.rate, l.cfg.terminals, via, 100*l.cfg.knownRatio)
}

// createCustomers creates every lender's customers unless they exist, from
// as many concurrent calls as there are terminals. Customer j gets risk
// tier, score and limit from j, so the decisions vary.
func (l *loadRun) createCustomers(ctx context.Context, op *apiClient) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(l.cfg.terminals)
	for _, ln := range l.lenders {
		for j, id := range ln.customers {
			c := api.NewCustomer{CustomerID: id, Name: fmt.Sprintf("Customer %d", j), SSN: customerSSN(id), LenderID: ln.id,
				RiskTier: schemas.RiskTiers[j%len(schemas.RiskTiers)], Score: 500 + (j*37)%330,
				CreditLimit: fmt.Sprintf("%d.00", 1000+(j*1733)%19000)}
			g.Go(func() error { return op.call(gctx, "POST", "/v1/customers", c, nil, http.StatusConflict) })
		}
	}
	return g.Wait()
}

// openDirect opens the stack's PII keys and a producer for --direct.
func (l *loadRun) openDirect(ctx context.Context) error {
	var err error
	if l.keys, err = pii.Open(ctx, devstack.PIIConfig(l.cfg.dir)); err != nil {
		return fmt.Errorf("opening the stack's PII keys in %s (--dir): %w", l.cfg.dir, err)
	}
	l.producer, err = kgo.NewClient(kgo.SeedBrokers(l.cfg.brokers...), kgo.RecordDeliveryTimeout(l.cfg.requestTimeout),
		kgo.MaxBufferedRecords(2*l.cfg.terminals))
	return err
}

// produce sends one application straight to the applications topic, keyed
// by its lender and id as the API does; accepted means acknowledged (acks=all,
// idempotent).
func (l *loadRun) produce(ctx context.Context, a loadApplication) (bool, string) {
	details, idx, err := api.SealApplicant(l.keys, a.id, a.name, a.ssn, "", "")
	if err != nil {
		return false, "sealing: " + err.Error()
	}
	val, err := l.codecs.EncodeApplication(api.Application{ApplicationID: a.id, POSTerminalID: a.terminal,
		LenderID: a.lender.id, CustomerID: a.customer, Amount: a.amount, Currency: "USD", EventTime: time.Now().UTC(),
		ApplicantDetails: details, SSNIndex: idx})
	if err != nil {
		return false, "encoding: " + err.Error()
	}
	rec := &kgo.Record{Topic: l.cfg.applications, Key: []byte(api.AppKey(a.lender.id, a.id)), Value: val}
	if err := l.producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return false, "produce: " + errorKind(err)
	}
	return true, ""
}

// decisionReader reads the decisions topic with read_committed from a
// minute before the run (record times are the applications' event times),
// without a consumer group.
func (l *loadRun) decisionReader() (*kgo.Client, error) {
	return kgo.NewClient(kgo.SeedBrokers(l.cfg.brokers...), kgo.ConsumeTopics(l.cfg.decisionsTop),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AfterMilli(l.start.Add(-time.Minute).UnixMilli())))
}

// readDecisions matches the run's decisions (keyed lender/application id)
// until ctx ends. The broker and the registry may go away and come back
// (loanflow dev restarted): the client reconnects, and a record that does
// not decode yet is tried again every second.
func (l *loadRun) readDecisions(ctx context.Context, cl *kgo.Client) error {
	prefix := []byte("/" + l.run + "-") // keys are lender/<run>-<seq>
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		for it := fs.RecordIter(); !it.Done(); {
			r := it.Next()
			if !bytes.Contains(r.Key, prefix) {
				continue
			}
			d, err := l.decode(ctx, r.Value)
			if err != nil {
				return nil // ctx ended
			}
			l.tracker.decided(d.ApplicationID, string(d.Basis), d.DecidedAt)
		}
	}
}

func (l *loadRun) decode(ctx context.Context, v []byte) (api.Decision, error) {
	for {
		d, err := l.codecs.DecodeDecision(v)
		if err == nil {
			return d, nil
		}
		if serr := sleepCtx(ctx, time.Second); serr != nil {
			return d, err
		}
	}
}

// customerSSN is the SSN load gives customer id: derived from the id, so a
// later run that finds the customer created still sends its SSN (an
// application naming a customer must carry the customer's SSN, or the API
// refuses it and the decisions job refers it).
func customerSSN(id string) string {
	h := sha256.Sum256([]byte("loanflow-load-ssn:" + id))
	v := binary.BigEndian.Uint64(h[:8])%665_000_000 + 1_000_000 // area 001..665
	s := fmt.Sprintf("%09d", v)
	return s[:3] + "-" + s[3:5] + "-" + s[5:]
}
