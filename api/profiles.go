package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
	"github.com/loanflow/loanflow/api/internal/money"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/internal/batch"
)

// Permissible-purpose codes (FCRA §604 style) a credit pull must carry.
var permissiblePurposes = map[string]bool{
	"CREDIT_TRANSACTION": true, // underwriting a credit application
	"ACCOUNT_REVIEW":     true, // reviewing an existing account
	"COLLECTION":         true, // collecting on an account
	"CONSUMER_REQUEST":   true, // written instruction of the consumer
	"INSURANCE":          true, // insurance underwriting
}

// CreditProfile is the cached, PII-free view of a customer's credit.
type CreditProfile struct {
	CustomerID      string          `json:"customer_id"`
	Score           int             `json:"score"`
	ScoreHistory    json.RawMessage `json:"score_history"`
	CreditLimit     string          `json:"credit_limit"`
	CurrentBalance  string          `json:"current_balance"`
	AvailableCredit string          `json:"available_credit"`
	RiskTier        string          `json:"risk_tier"`
	Status          string          `json:"status"`
	Version         int64           `json:"version"`
	UpdatedAt       time.Time       `json:"updated_at"`
}

// PII is a customer's decrypted personal data (pii:read only; never cached).
type PII struct {
	Name        string `json:"name,omitempty"`
	SSN         string `json:"ssn"`
	Address     string `json:"address,omitempty"`
	DateOfBirth string `json:"date_of_birth,omitempty"`
}

type profileResponse struct {
	CreditProfile
	Source string `json:"source"` // cache | database
	PII    *PII   `json:"pii,omitempty"`
}

var errNoProfile = errors.New("api: no such credit profile")

func cacheKey(id string) string { return "profile:" + id }

// cachedProfile is cache-aside over Redis behind a circuit breaker. The
// whole lookup of an id (GET, and on a miss the PostgreSQL load and the
// SET) runs once for all concurrent requests of that id (singleflight):
// concurrent misses load PostgreSQL once, concurrent hits of a hot id share
// one GET, and a request arriving after a flight finished finds the entry
// that flight cached.
func (s *Server) cachedProfile(ctx context.Context, id string) (CreditProfile, string, error) {
	if s.near != nil {
		// A near-cache hit needs no flight (DoChan starts a goroutine).
		if cp, ok := s.near.get(id); ok {
			s.metrics.cache.WithLabelValues("hit").Inc()
			return cp, "cache", nil
		}
	}
	ch := s.flight.DoChan(id, func() (any, error) {
		// Detached from the first caller's cancellation; bounded.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.RequestTimeout)
		defer cancel()
		return s.lookupProfile(cctx, id)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return CreditProfile{}, "", res.Err
		}
		l := res.Val.(profileLookup)
		return l.cp, l.source, nil
	case <-ctx.Done():
		return CreditProfile{}, "", ctx.Err()
	}
}

type profileLookup struct {
	cp     CreditProfile
	source string // cache | database
}

func (s *Server) lookupProfile(ctx context.Context, id string) (profileLookup, error) {
	var tok nearToken
	if s.near != nil {
		if cp, ok := s.near.get(id); ok {
			s.metrics.cache.WithLabelValues("hit").Inc()
			return profileLookup{cp, "cache"}, nil
		}
		tok = s.near.token(id)
	}
	if b, err := s.cacheGet(ctx, id); err == nil {
		var cp CreditProfile
		if json.Unmarshal(b, &cp) == nil && cp.CustomerID == id {
			s.metrics.cache.WithLabelValues("hit").Inc()
			if s.near != nil {
				s.near.put(id, cp, tok)
			}
			return profileLookup{cp, "cache"}, nil
		}
		s.metrics.cache.WithLabelValues("error").Inc() // unreadable entry: reload it
	}
	cp, err := s.loadProfile(ctx, id)
	if err != nil {
		return profileLookup{}, err
	}
	s.cacheSet(ctx, cp)
	return profileLookup{cp, "database"}, nil
}

// cacheGet returns the cached bytes; any error (miss, Redis down, breaker
// open) sends the caller to PostgreSQL.
func (s *Server) cacheGet(ctx context.Context, id string) ([]byte, error) {
	b, err := s.breaker.Execute(func() ([]byte, error) {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
		defer cancel()
		return s.gets.Do(cctx, id)
	})
	switch {
	case err == nil:
	case errors.Is(err, redis.Nil):
		s.metrics.cache.WithLabelValues("miss").Inc()
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		s.metrics.cache.WithLabelValues("bypass").Inc()
	default:
		s.metrics.cache.WithLabelValues("error").Inc()
	}
	return b, err
}

func (s *Server) cacheSet(ctx context.Context, cp CreditProfile) {
	b, err := json.Marshal(cp)
	if err != nil {
		return
	}
	ttl := s.cfg.CacheTTL
	if j := s.cfg.CacheTTLJitter; j > 0 {
		ttl += time.Duration(rand.Int64N(int64(j)))
	}
	_, _ = s.breaker.Execute(func() ([]byte, error) {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
		defer cancel()
		_, err := s.sets.Do(cctx, cacheEntry{key: cacheKey(cp.CustomerID), value: b, ttl: ttl})
		return nil, err
	})
}

// cacheEntry is one SET of the cache.
type cacheEntry struct {
	key   string
	value []byte
	ttl   time.Duration
}

// Batch sizes and workers of the profile path's round trips: under load
// the misses queued behind a busy worker share its next round trip. Fewer
// workers make bigger batches and less work per miss: cache-miss p99 at
// 5,000/s in 20 s runs was 47 ms with 8 workers, 18 with 4, 13 and 18
// with 2, 14 with 1 (docs/design.md).
const (
	batchWorkers = 2
	batchMax     = 64
)

// startBatchers starts the batched round trips of the profile path: a
// cache miss's PostgreSQL load, and Redis GETs and SETs.
func (s *Server) startBatchers() {
	s.loads = batch.New(batchWorkers, batchMax, s.cfg.RequestTimeout, s.loadProfiles)
	s.named = batch.New(batchWorkers, batchMax, s.cfg.RequestTimeout, s.loadNamedCustomers)
	s.gets = batch.New(batchWorkers, batchMax, s.cfg.RedisTimeout, func(ctx context.Context, calls []*batch.Call[string, []byte]) {
		keys := batch.Keys(calls)
		for i, k := range keys {
			keys[i] = cacheKey(k)
		}
		vals, err := s.redis.MGet(ctx, keys...).Result()
		for i, c := range calls {
			switch {
			case err != nil:
				c.Err = err
			case i >= len(vals) || vals[i] == nil:
				c.Err = redis.Nil
			default:
				if v, ok := vals[i].(string); ok {
					c.Resp = []byte(v)
				} else {
					c.Err = redis.Nil
				}
			}
		}
	})
	s.sets = batch.New(batchWorkers, batchMax, s.cfg.RedisTimeout, func(ctx context.Context, calls []*batch.Call[cacheEntry, struct{}]) {
		cmds, err := s.redis.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, c := range calls {
				p.Set(ctx, c.Req.key, c.Req.value, c.Req.ttl)
			}
			return nil
		})
		for i, c := range calls {
			switch {
			case i < len(cmds) && cmds[i].Err() != nil:
				c.Err = cmds[i].Err()
			case err != nil:
				c.Err = err
			}
		}
	})
}

func newBreaker(cfg *Config, m *metrics) *gobreaker.CircuitBreaker[[]byte] {
	return gobreaker.NewCircuitBreaker[[]byte](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1,
		Timeout:     cfg.BreakerOpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= cfg.BreakerFailures },
		IsSuccessful: func(err error) bool {
			return err == nil || errors.Is(err, redis.Nil)
		},
		OnStateChange: func(_ string, _, to gobreaker.State) { m.breaker.Set(float64(to)) },
	})
}

func (s *Server) loadProfile(ctx context.Context, id string) (CreditProfile, error) {
	s.metrics.dbLoads.Inc()
	return s.loads.Do(ctx, id)
}

// loadProfiles loads a batch of cache misses in one query.
func (s *Server) loadProfiles(ctx context.Context, calls []*batch.Call[string, CreditProfile]) {
	rows, err := s.pool.Query(ctx, `SELECT c.customer_id, p.current_score, p.score_history, c.credit_limit::text,
		c.current_balance::text, c.risk_tier, c.status, c.version, GREATEST(p.updated_at, c.updated_at)
		FROM customers c JOIN credit_profiles p USING (customer_id) WHERE c.customer_id = ANY($1)`, batch.Keys(calls))
	found := make(map[string]CreditProfile, len(calls))
	bad := make(map[string]error)
	if err == nil {
		for rows.Next() {
			var cp CreditProfile
			var hist []byte
			if err = rows.Scan(&cp.CustomerID, &cp.Score, &hist, &cp.CreditLimit, &cp.CurrentBalance, &cp.RiskTier, &cp.Status, &cp.Version, &cp.UpdatedAt); err != nil {
				break
			}
			cp.ScoreHistory = append(json.RawMessage(nil), hist...) // the row buffer is reused by Next
			lim, err1 := money.Parse(cp.CreditLimit)
			bal, err2 := money.Parse(cp.CurrentBalance)
			if err := errors.Join(err1, err2); err != nil {
				bad[cp.CustomerID] = fmt.Errorf("api: stored money: %w", err)
				continue
			}
			cp.CreditLimit, cp.CurrentBalance = lim.String(), bal.String()
			avail := lim - bal
			if avail < 0 {
				avail = 0
			}
			cp.AvailableCredit = avail.String()
			found[cp.CustomerID] = cp
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err != nil {
		err = fmt.Errorf("api: loading profile: %w", err)
	}
	batch.Answer(calls, found, err, errNoProfile)
	for _, c := range calls {
		if e := bad[c.Req]; e != nil && err == nil {
			c.Err = e
		}
	}
}

func (s *Server) getCreditProfile(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	id := r.PathValue("id")
	query := r.URL.Query()
	purpose := query.Get("purpose")
	if purpose == "" {
		purpose = r.Header.Get("X-Permissible-Purpose")
	}
	if !permissiblePurposes[purpose] {
		writeProblem(w, r, http.StatusBadRequest, "permissible-purpose-required",
			"send a permissible-purpose code (?purpose= or X-Permissible-Purpose): CREDIT_TRANSACTION, ACCOUNT_REVIEW, COLLECTION, CONSUMER_REQUEST or INSURANCE")
		return
	}
	if !validID(id) {
		writeProblem(w, r, http.StatusBadRequest, "bad-id", "customer id must be 1-64 of [A-Za-z0-9_.:-]")
		return
	}
	if p.Lender == "" {
		writeProblem(w, r, http.StatusForbidden, "no-lender", "credit profiles are read by a lender's client, for a customer of that lender")
		return
	}
	// Tenant isolation: the lender must know the customer, and the purpose
	// must be one its relationship justifies. No relationship and no such
	// customer answer alike (404), so ids cannot be probed.
	rel, err := s.relationship(r.Context(), p.Lender, id, purposeBases[purpose])
	if err != nil {
		s.log.Error("credit profile relationship", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not read the credit profile")
		return
	}
	if rel == 0 {
		if s.auditRead(w, r, s.auditEntry(r.Context(), p, "credit_profile.read", "customer/"+id, purpose, audit.ResultDenied)) {
			writeProblem(w, r, http.StatusNotFound, "not-found", "no such credit profile")
		}
		return
	}
	if rel&purposeBases[purpose] == 0 {
		if s.auditRead(w, r, s.auditEntry(r.Context(), p, "credit_profile.read", "customer/"+id, purpose, audit.ResultDenied)) {
			writeProblem(w, r, http.StatusForbidden, "purpose-not-permitted",
				"your relationship with this customer does not support permissible purpose "+purpose+
					" (CREDIT_TRANSACTION needs an application or your own customer, ACCOUNT_REVIEW a loan or your own customer, COLLECTION a loan, CONSUMER_REQUEST your own customer)")
		}
		return
	}
	cp, source, err := s.cachedProfile(r.Context(), id)
	if errors.Is(err, errNoProfile) {
		if s.auditRead(w, r, s.auditEntry(r.Context(), p, "credit_profile.read", "customer/"+id, purpose, audit.ResultDenied)) {
			writeProblem(w, r, http.StatusNotFound, "not-found", "no such credit profile")
		}
		return
	}
	if err != nil {
		s.log.Error("credit profile", "request_id", requestID(r.Context()), "err", err)
		if r.Context().Err() != nil {
			w.Header().Set("Retry-After", "1")
			writeProblem(w, r, http.StatusServiceUnavailable, "timeout", "the credit profile could not be read in time; retry")
			return
		}
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not read the credit profile")
		return
	}
	resp := profileResponse{CreditProfile: cp, Source: source}
	entries := []audit.Entry{s.auditEntry(r.Context(), p, "credit_profile.read", "customer/"+id, purpose, audit.ResultOK)}
	if query.Get("include") == "pii" {
		// Full PII needs pii:read granted explicitly (admin never implies
		// it); anyone else who may read the profile gets the SSN's last
		// four digits only, enough to confirm an applicant's identity.
		full := p.Has(auth.ScopePIIRead)
		pi, err := s.decryptCustomer(r.Context(), id, full)
		if err != nil {
			s.log.Error("decrypting PII", "request_id", requestID(r.Context()), "err", err)
			writeProblem(w, r, http.StatusInternalServerError, "internal", "could not decrypt PII")
			return
		}
		resp.PII = &pi
		action := "pii.read"
		if !full {
			action = "pii.read_masked"
		}
		entries = append(entries, s.auditEntry(r.Context(), p, action, "customer/"+id, purpose, audit.ResultOK))
	}
	for _, e := range entries {
		if !s.auditRead(w, r, e) {
			return
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) decryptCustomer(ctx context.Context, id string, full bool) (PII, error) {
	var name, ssn, addr, dob []byte
	err := s.pool.QueryRow(ctx, "SELECT name_ct, ssn_ct, address_ct, dob_ct FROM customers WHERE customer_id = $1", id).
		Scan(&name, &ssn, &addr, &dob)
	if err != nil {
		return PII{}, err
	}
	var out PII
	cols := []struct {
		col string
		ct  []byte
		dst *string
	}{{"ssn_ct", ssn, &out.SSN}, {"name_ct", name, &out.Name}, {"address_ct", addr, &out.Address}, {"dob_ct", dob, &out.DateOfBirth}}
	if !full {
		cols = cols[:1]
	}
	for _, c := range cols {
		if c.ct == nil {
			continue
		}
		pt, err := s.keys.Decrypt(pii.Field{Table: "customers", Column: c.col, Row: id}, c.ct)
		if err != nil {
			return PII{}, err
		}
		*c.dst = string(pt)
	}
	if !full {
		out.SSN = MaskSSN(out.SSN)
	}
	return out, nil
}

// MaskSSN keeps an SSN's last four digits: "***-**-6789".
func MaskSSN(ssn string) string {
	if len(ssn) < 4 {
		return "***-**-****"
	}
	return "***-**-" + ssn[len(ssn)-4:]
}
