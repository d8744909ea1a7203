package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api/auth"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/schemas"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// lockedBuffer collects the server's logs for the PII scan.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type env struct {
	t        testing.TB
	srv      *Server
	url      string
	cfg      Config
	logs     *lockedBuffer
	brokers  []string
	registry string
	admin    string // admin bearer token
	client   *http.Client
	stop     func()
}

type envOpt func(*Config)

// newEnv starts a server against a fresh database, the shared (or given)
// redis-server, the shared broker with per-test topics and a schema
// registry, with the dev issuer's keys fetched over HTTP.
func newEnv(t testing.TB, opts ...envOpt) *env { return newEnvFor(t, opts...) }

// newEnvFor is newEnv for any testing.TB (fuzz targets share one server).
func newEnvFor(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, logs: &lockedBuffer{}, client: &http.Client{Timeout: 30 * time.Second}}
	dsn := testenv.NewDatabase(t)
	rd := testenv.Redis(t)
	e.brokers = testenv.Broker(t).Addrs()
	e.registry = startRegistry(t, e.brokers)
	topics := [4]string{testenv.Name(t, "apps"), testenv.Name(t, "decisions"), testenv.Name(t, "metrics"), testenv.Name(t, "anchors")}
	createTopics(t, e.brokers, topics[:]...)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	e.cfg = Config{DevIssuer: true,
		Addr: ln.Addr().String(), DatabaseURL: dsn, RedisURL: rd.URL(), KafkaBrokers: e.brokers,
		SchemaRegistryURL: e.registry, ApplicationsTopic: topics[0], DecisionsTopic: topics[1], MetricsTopic: topics[2], AuditAnchorsTopic: topics[3],
		PublicURL: e.url, JWKSURL: e.url + "/.well-known/jwks.json", JWKSMinRefetchInterval: time.Second,
		PII: pii.Config{KEKURI: pii.LocalKMSPrefix + filepath.Join(dir, "kek.json"),
			DataKeysetPath: filepath.Join(dir, "data.json"), IndexKeysetPath: filepath.Join(dir, "index.json")},
		RateLimitPerSec: 100000, RateLimitBurst: 100000, BreakerOpenTimeout: 300 * time.Millisecond,
		KeysReloadInterval: 100 * time.Millisecond, RedisTimeout: 200 * time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(&e.cfg)
	}
	if err := pii.Init(ctx, e.cfg.PII); err != nil {
		t.Fatal(err)
	}
	e.srv, err = New(ctx, e.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(sctx, ln) }()
	e.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		e.srv.Close()
	}
	t.Cleanup(func() { e.stopOnce() })
	creds, _, err := e.srv.EnsureAdminClient(ctx, "ops-admin")
	if err != nil {
		t.Fatal(err)
	}
	e.admin = e.token(creds.ClientID, creds.ClientSecret)
	return e
}

var stopped sync.Map

func (e *env) stopOnce() {
	if _, loaded := stopped.LoadOrStore(e, true); !loaded {
		e.stop()
	}
}

// startRegistry runs the embedded schema registry on the shared broker,
// storing its schemas in a topic of this test.
func startRegistry(t testing.TB, brokers []string) string {
	t.Helper()
	reg, err := schemaregistry.New(schemaregistry.Config{Brokers: brokers, Listen: "127.0.0.1:0", Topic: testenv.Name(t, "schemas")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("schema registry: %v", err)
		}
	})
	select {
	case <-reg.Ready():
	case err := <-done:
		t.Fatalf("schema registry: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("schema registry not ready")
	}
	return reg.URL()
}

func createTopics(t testing.TB, brokers []string, topics ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).CreateTopics(ctx, 3, 1, nil, topics...)
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.Error(); err != nil {
		t.Fatal(err)
	}
}

// token runs the client-credentials grant over HTTP.
func (e *env) token(id, secret string) string {
	e.t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}}
	req, _ := http.NewRequest(http.MethodPost, e.url+"/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&out) != nil {
		e.t.Fatalf("token for %s: status %d", id, resp.StatusCode)
	}
	return out.AccessToken
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

// do sends a request; body may be nil, a string or a value to encode.
func (e *env) do(method, path, tok string, body any, hdr ...string) response {
	e.t.Helper()
	r, err := e.try(method, path, tok, body, hdr...)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) try(method, path, tok string, body any, hdr ...string) (response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		return response{}, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}, err
}

// lender creates a lender and a client with every lender scope and
// returns a token.
func (e *env) lender(id string, extra ...string) string {
	e.t.Helper()
	r := e.do("POST", "/v1/admin/lenders", e.admin, NewLender{LenderID: id, Name: "Lender " + id})
	if r.status != 201 {
		e.t.Fatalf("creating lender: %d %s", r.status, r.body)
	}
	scopes := append([]string{auth.ScopeCreditRead, auth.ScopeLoansWrite, auth.ScopeApplicationsWrite, auth.ScopePortfolioRead}, extra...)
	r = e.do("POST", "/v1/admin/clients", e.admin, NewClient{ClientID: id + "-client", LenderID: id, Scopes: scopes})
	if r.status != 201 {
		e.t.Fatalf("creating client: %d %s", r.status, r.body)
	}
	var c ClientCredentials
	r.json(e.t, &c)
	return e.token(c.ClientID, c.ClientSecret)
}

// customer creates a customer with PII and a credit profile (limit
// 10,000.00 USD), onboarded by lender[0] when given (the lender gets the
// customer relationship).
func (e *env) customer(id, name, ssn string, lender ...string) {
	e.t.Helper()
	e.customerWith(NewCustomer{CustomerID: id, Name: name, SSN: ssn,
		Address: "1 Main St", DateOfBirth: "1980-01-02", CreditLimit: "10000.00", RiskTier: "MEDIUM", Score: 710}, lender...)
}

func (e *env) customerWith(c NewCustomer, lender ...string) {
	e.t.Helper()
	if len(lender) > 0 {
		c.LenderID = lender[0]
	}
	r := e.do("POST", "/v1/customers", e.admin, c)
	if r.status != 201 {
		e.dumpLogs()
		e.t.Fatalf("creating customer: %d %s", r.status, r.body)
	}
}

func (e *env) createLoan(tok, key, customer, amount string) (Loan, response) {
	e.t.Helper()
	r := e.do("POST", "/v1/loans", tok, map[string]any{"customer_id": customer, "amount": amount, "currency": "USD", "term_months": 12},
		"Idempotency-Key", key)
	var l Loan
	if r.status == 201 {
		r.json(e.t, &l)
	}
	return l, r
}

// produce writes Avro records to a topic.
func (e *env) produce(topic string, vals ...[]byte) {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, v := range vals {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: v}).FirstErr(); err != nil {
			e.t.Fatal(err)
		}
	}
}

// avro returns producer-side serdes registered in the test's registry.
func (e *env) avro() (*schemas.Serde[schemas.LoanDecision], *schemas.Serde[schemas.PortfolioMetric], *schemas.Serde[schemas.LoanApplication]) {
	e.t.Helper()
	ctx := context.Background()
	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{e.registry}})
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := schemas.NewSerde[schemas.LoanDecision](ctx, cl, schemas.ValueSubject(e.cfg.DecisionsTopic), schemas.LoanDecisionSchema)
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := schemas.NewSerde[schemas.PortfolioMetric](ctx, cl, schemas.ValueSubject(e.cfg.MetricsTopic), schemas.PortfolioMetricSchema)
	if err != nil {
		e.t.Fatal(err)
	}
	a, err := schemas.NewSerde[schemas.LoanApplication](ctx, cl, schemas.ValueSubject(e.cfg.ApplicationsTopic), schemas.LoanApplicationSchema)
	if err != nil {
		e.t.Fatal(err)
	}
	return d, m, a
}

func decisionRecord(t testing.TB, s *schemas.Serde[schemas.LoanDecision], app, lender, decision string, score int32) []byte {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	v, err := s.Encode(nil, schemas.LoanDecision{ApplicationID: app, LenderID: lender, Decision: schemas.Decision(decision),
		ReasonCodes: []string{"R01_SCORE"}, Score: score, Amount: schemas.MustParseDecimal("1500.00"), Currency: "USD",
		AvailableCredit: schemas.MustParseDecimal("8500.00"), Basis: schemas.BasisCustomer360, EventTime: now, DecidedAt: now, EngineLatencyMs: 12})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func metricRecord(t testing.TB, s *schemas.Serde[schemas.PortfolioMetric], lender string, start time.Time, originations int64, outstanding string) []byte {
	t.Helper()
	v, err := s.Encode(nil, schemas.PortfolioMetric{LenderID: lender, WindowStart: start, WindowEnd: start.Add(time.Minute), Currency: "USD",
		Originations: originations, OriginatedAmount: schemas.MustParseDecimal(fmt.Sprintf("%d.00", originations*1500)),
		Approvals: originations, Declines: 2, Refers: 1, ActiveLoans: originations + 10,
		OutstandingBalance: schemas.MustParseDecimal(outstanding), DelinquentBalance: schemas.MustParseDecimal("100.00"),
		DelinquencyRate: 0.025, DefaultRate: 0.01, ComputedAt: time.Now().UTC().Truncate(time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (e *env) dumpLogs() { e.t.Log(e.logs.String()) }
