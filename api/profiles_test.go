package api

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loanflow/loanflow/internal/testenv"
)

type profileResp struct {
	CreditProfile
	Source string `json:"source"`
	PII    *PII   `json:"pii"`
}

func (e *env) profile(tok, id string) (profileResp, response) {
	e.t.Helper()
	r := e.do("GET", "/v1/credit-profiles/"+id+"?purpose=CREDIT_TRANSACTION", tok, nil)
	var p profileResp
	if r.status == 200 {
		r.json(e.t, &p)
	}
	return p, r
}

func TestCreditProfileCacheAndPurpose(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-p")
	pii := e.lender("bank-pii", "pii:read")
	e.customer("c-p", "Katherine Johnson", "333-44-5555", "bank-p")
	// bank-pii learns the customer from an application with its SSN.
	if r := e.apply(pii, "app-pii-1", "c-p", "333-44-5555", "USD"); r.status != 202 {
		t.Fatalf("application: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/v1/credit-profiles/c-p", tok, nil); r.status != 400 {
		t.Fatalf("no purpose: %d", r.status)
	}
	p, r := e.profile(tok, "c-p")
	if r.status != 200 || p.Source != "database" || p.Score != 710 || p.AvailableCredit != "10000.00" || p.PII != nil {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	if p, _ := e.profile(tok, "c-p"); p.Source != "cache" {
		t.Fatalf("second lookup source %q, want cache", p.Source)
	}
	if _, r := e.profile(tok, "nobody"); r.status != 404 {
		t.Fatalf("unknown: %d", r.status)
	}
	if r := e.do("GET", "/v1/credit-profiles/c-p?purpose=CREDIT_TRANSACTION&include=pii", tok, nil); r.status != 200 ||
		!strings.Contains(string(r.body), `"ssn":"***-**-5555"`) || strings.Contains(string(r.body), "Katherine") {
		t.Fatalf("pii without scope: %d %s", r.status, r.body)
	}
	checkAuditCounts(t, e, "bank-p", map[string]int{"credit_profile.read": 4, "pii.read_masked": 1, "oauth.token": 1}) // 3 found, 1 unknown; 1 masked
	if r := e.do("GET", "/v1/credit-profiles/c-p?purpose=ACCOUNT_REVIEW&include=pii", pii, nil); r.status != 403 {
		t.Fatalf("account review by a lender with an application only: %d %s", r.status, r.body)
	}
	r = e.do("GET", "/v1/credit-profiles/c-p?purpose=CREDIT_TRANSACTION&include=pii", pii, nil)
	var full profileResp
	r.json(t, &full)
	if r.status != 200 || full.PII == nil || full.PII.Name != "Katherine Johnson" || full.PII.SSN != "333445555" {
		t.Fatalf("pii read: %d %s", r.status, r.body)
	}
	var n int
	_ = e.srv.Pool().QueryRow(context.Background(), "SELECT count(*) FROM audit_log WHERE action = 'pii.read' AND purpose = 'CREDIT_TRANSACTION' AND lender_id = 'bank-pii'").Scan(&n)
	if n != 1 {
		t.Fatalf("pii.read audit rows = %d", n)
	}
	// Coalescing: concurrent misses for one id hit PostgreSQL once.
	e.customer("c-hot", "Dorothy Vaughan", "444-55-6666", "bank-p")
	before := counter(t, e, "loanflow_api_profile_db_loads_total")
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); <-start; e.profile(tok, "c-hot") }()
	}
	close(start)
	wg.Wait()
	if got := counter(t, e, "loanflow_api_profile_db_loads_total") - before; got != 1 {
		t.Fatalf("20 concurrent lookups of a cold id loaded it %v times from PostgreSQL, want 1", got)
	}
}

func counter(t *testing.T, e *env, name string) float64 {
	mfs, err := e.srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

func cacheCount(t *testing.T, e *env, result string) float64 {
	mfs, err := e.srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "loanflow_api_profile_cache_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestRedisOutage: lookups keep answering from PostgreSQL while Redis is
// stopped, and use the cache again once it is back.
func TestRedisOutage(t *testing.T) {
	rd := testenv.NewRedis(t)
	e := newEnv(t, func(c *Config) { c.RedisURL = rd.URL() })
	tok := e.lender("bank-r")
	for _, id := range []string{"r-1", "r-2"} {
		e.customer(id, "Mary Jackson", "555-66-7777", "bank-r")
	}
	e.profile(tok, "r-1")
	if p, _ := e.profile(tok, "r-1"); p.Source != "cache" {
		t.Fatalf("before outage: %s", p.Source)
	}
	rd.Stop()
	// The near cache notices the lost connection and is bypassed (its
	// entries cannot be kept coherent without Redis).
	waitFor(t, "the near cache bypassed", func() bool { return !nearLive(t, e) })
	for i := 0; i < 50; i++ {
		p, r := e.profile(tok, "r-"+string(rune('1'+i%2)))
		if r.status != 200 || p.Source != "database" {
			t.Fatalf("lookup %d during outage: %d %s", i, r.status, r.body)
		}
	}
	if cacheCount(t, e, "bypass") == 0 {
		t.Fatal("circuit breaker never opened")
	}
	if err := rd.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cache used again", func() bool {
		p, r := e.profile(tok, "r-2")
		return r.status == 200 && p.Source == "cache"
	})
	c := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer c.Close()
	if n, _ := c.Exists(context.Background(), "profile:r-2").Result(); n != 1 {
		t.Fatal("profile:r-2 not cached after recovery")
	}
	_ = time.Second
}

// TestConcurrentMissesEachGetTheirOwnProfile: cache misses of many
// customers at once (loaded from PostgreSQL and read from Redis in shared
// round trips) each answer that customer's own profile, which the test
// set (a score and a credit limit per customer), and an unknown id among
// them answers 404; read again, each comes from the cache with the same
// values.
func TestConcurrentMissesEachGetTheirOwnProfile(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-batch")
	const n = 40
	for i := 0; i < n; i++ {
		e.customerWith(NewCustomer{CustomerID: fmt.Sprintf("c-batch-%d", i), Name: "Ada Lovelace", SSN: fmt.Sprintf("123-45-%04d", 1000+i),
			Address: "1 Main St", DateOfBirth: "1980-01-02", CreditLimit: fmt.Sprintf("%d.00", 1000+i), RiskTier: "MEDIUM", Score: 500 + i}, "bank-batch")
	}
	for round, source := range []string{"database", "cache"} {
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan string, n+1)
		for i := 0; i <= n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				id := fmt.Sprintf("c-batch-%d", i)
				p, r := e.profile(tok, id)
				switch {
				case i == n:
					if r.status != 404 {
						errs <- fmt.Sprintf("unknown id %s: %d", id, r.status)
					}
				case r.status != 200:
					errs <- fmt.Sprintf("%s: %d %s", id, r.status, r.body)
				case p.CustomerID != id || p.Score != 500+i || p.CreditLimit != fmt.Sprintf("%d.00", 1000+i) || p.Source != source:
					errs <- fmt.Sprintf("round %d, %s: got customer %s score %d limit %s source %s", round, id, p.CustomerID, p.Score, p.CreditLimit, p.Source)
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for msg := range errs {
			t.Error(msg)
		}
	}
}

// TestAuditWaitObservedPerAuditedRead: every audited read observes its
// wait for the audit row once (loanflow_api_audit_wait_seconds), and a
// request that audits nothing (/healthz) observes none.
func TestAuditWaitObservedPerAuditedRead(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-wait")
	e.customerWith(NewCustomer{CustomerID: "c-wait", Name: "Ada Lovelace", SSN: "123-45-9999", CreditLimit: "100.00", RiskTier: "LOW", Score: 700}, "bank-wait")
	count := func() int {
		t.Helper()
		m := e.do("GET", "/metrics", "", nil)
		for _, line := range strings.Split(string(m.body), "\n") {
			if v, ok := strings.CutPrefix(line, "loanflow_api_audit_wait_seconds_count "); ok {
				n, err := strconv.Atoi(v)
				if err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				return n
			}
		}
		t.Fatalf("no loanflow_api_audit_wait_seconds_count in /metrics (%d)", m.status)
		return 0
	}
	before := count()
	for range 3 {
		if _, r := e.profile(tok, "c-wait"); r.status != 200 {
			t.Fatalf("lookup: %d %s", r.status, r.body)
		}
	}
	if r := e.do("GET", "/healthz", "", nil); r.status != 200 {
		t.Fatalf("healthz: %d", r.status)
	}
	if got := count() - before; got != 3 {
		t.Fatalf("audit waits observed: %d, want 3 (three audited lookups and an unaudited /healthz)", got)
	}
}

// TestUnreadableStoredMoneyFailsOnlyItsOwnLookup: a customers row whose
// credit limit cannot be read as money (NaN, which PostgreSQL's numeric
// accepts) answers its lookup with a problem (500 internal, no profile),
// and the customers looked up beside it, possibly in the same batched
// query, still get their own profiles.
func TestUnreadableStoredMoneyFailsOnlyItsOwnLookup(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-nan")
	const n = 10
	for i := 0; i < n; i++ {
		e.customerWith(NewCustomer{CustomerID: fmt.Sprintf("c-nan-%d", i), Name: "Ada Lovelace", SSN: fmt.Sprintf("123-45-%04d", 5000+i),
			CreditLimit: fmt.Sprintf("%d.00", 100+i), RiskTier: "LOW", Score: 600 + i}, "bank-nan")
	}
	if _, err := e.srv.Pool().Exec(context.Background(), "UPDATE customers SET credit_limit = 'NaN' WHERE customer_id = 'c-nan-0'"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			id := fmt.Sprintf("c-nan-%d", i)
			p, r := e.profile(tok, id)
			switch {
			case i == 0:
				if r.status != 500 || strings.Contains(string(r.body), "credit_limit") {
					errs <- fmt.Sprintf("%s (NaN limit): %d %s", id, r.status, r.body)
				}
			case r.status != 200 || p.CustomerID != id || p.CreditLimit != fmt.Sprintf("%d.00", 100+i) || p.Score != 600+i:
				errs <- fmt.Sprintf("%s: %d %s", id, r.status, r.body)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
}
