package api

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/text/currency"
)

// Relationship bases (lender_customers.basis): how a lender came to know
// a customer. A lender reaches a customer's credit data only through one.
const (
	basisCustomer    = "customer"    // the lender onboarded the customer
	basisApplication = "application" // an application whose applicant's SSN matched
	basisLoan        = "loan"        // the lender booked a loan on the customer
)

// relBits is a set of bases.
type relBits uint8

const (
	relCustomer relBits = 1 << iota
	relApplication
	relLoan
)

func bitOf(basis string) relBits {
	switch basis {
	case basisCustomer:
		return relCustomer
	case basisApplication:
		return relApplication
	case basisLoan:
		return relLoan
	}
	return 0
}

// purposeBases binds each FCRA permissible purpose to the relationships
// that justify it: underwriting needs an application (or the lender's own
// customer), account review and collection need an account, a consumer's
// written instruction goes to the lender that onboarded them. Loanflow
// lenders do not underwrite insurance: INSURANCE is never permitted.
var purposeBases = map[string]relBits{
	"CREDIT_TRANSACTION": relApplication | relCustomer,
	"ACCOUNT_REVIEW":     relLoan | relCustomer,
	"COLLECTION":         relLoan,
	"CONSUMER_REQUEST":   relCustomer,
	"INSURANCE":          0,
}

// relCache remembers relationships found (they are never removed, so a
// positive answer never goes stale); absences are not cached. Bounded:
// when full it starts over.
type relCache struct {
	mu  sync.Mutex
	max int
	m   map[string]relBits
}

func relKey(lender, customer string) string { return lender + "/" + customer }

func (c *relCache) get(lender, customer string) relBits {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[relKey(lender, customer)]
}

func (c *relCache) add(lender, customer string, b relBits) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= c.max {
		c.m = make(map[string]relBits)
	}
	c.m[relKey(lender, customer)] |= b
}

// relationship returns the bases on which lender knows customer (0: none,
// or no such customer; the two are answered alike). A cached answer that
// has none of the bases in need is checked again in PostgreSQL (another
// API instance may have added one).
func (s *Server) relationship(ctx context.Context, lender, customer string, need relBits) (relBits, error) {
	if lender == "" {
		return 0, nil
	}
	if b := s.rels.get(lender, customer); b&need != 0 {
		return b, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT basis FROM lender_customers WHERE lender_id = $1 AND customer_id = $2", lender, customer)
	if err != nil {
		return 0, fmt.Errorf("api: reading relationship: %w", err)
	}
	bases, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("api: reading relationship: %w", err)
	}
	var b relBits
	for _, x := range bases {
		b |= bitOf(x)
	}
	if b != 0 {
		s.rels.add(lender, customer, b)
	}
	return b, nil
}

// relate records a relationship (idempotent), in tx or on its own.
func relate(ctx context.Context, tx interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, lender, customer, basis string) error {
	_, err := tx.Exec(ctx, `INSERT INTO lender_customers (lender_id, customer_id, basis) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, lender, customer, basis)
	if err != nil {
		return fmt.Errorf("recording the %s relationship: %w", basis, err)
	}
	return nil
}

// validCurrency reports whether c is an active ISO 4217 currency code.
// The X.. codes (precious metals, funds, XTS testing, XXX no currency) are
// not currencies a loan can be denominated in.
func validCurrency(c string) bool {
	if len(c) != 3 || strings.ToUpper(c) != c || c[0] == 'X' {
		return false
	}
	_, err := currency.ParseISO(c)
	return err == nil
}
