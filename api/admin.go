package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
	"github.com/loanflow/loanflow/api/internal/money"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/schemas"
)

// validID reports whether s has the form of a Loanflow id (customers,
// lenders, loans, applications, request ids): 1-64 of [A-Za-z0-9_.:-].
// Anything else names nothing and must not reach PostgreSQL, which refuses
// NUL and invalid UTF-8 with an error. (A loop, not a regexp: it runs
// several times per request.)
func validID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '.', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// resourceOf names a resource for the audit log; an id that is not an id
// is quoted (ASCII, bounded) so the attempt is still recorded.
func resourceOf(prefix, id string) string {
	if validID(id) {
		return prefix + id
	}
	q := strconv.QuoteToASCII(id)
	if len(q) > 130 {
		q = q[:130] + "..."
	}
	return prefix + q
}

// NewLender is the body of POST /v1/admin/lenders.
type NewLender struct {
	LenderID        string   `json:"lender_id"`
	Name            string   `json:"name"`
	RateLimitPerSec *float64 `json:"rate_limit_per_sec,omitempty"`
	RateBurst       *int     `json:"rate_burst,omitempty"`
}

// NewClient is the body of POST /v1/admin/clients.
type NewClient struct {
	ClientID string   `json:"client_id"`
	LenderID string   `json:"lender_id,omitempty"` // empty for operator clients
	Scopes   []string `json:"scopes"`
}

// ClientCredentials is returned once, when a client is created.
type ClientCredentials struct {
	ClientID     string   `json:"client_id"`
	ClientSecret string   `json:"client_secret"`
	LenderID     string   `json:"lender_id,omitempty"`
	Scopes       []string `json:"scopes"`
}

// NewCustomer is the body of POST /v1/customers.
type NewCustomer struct {
	CustomerID  string `json:"customer_id"`
	Name        string `json:"name"`
	SSN         string `json:"ssn"`
	Address     string `json:"address,omitempty"`
	DateOfBirth string `json:"date_of_birth,omitempty"`
	CreditLimit string `json:"credit_limit"`
	RiskTier    string `json:"risk_tier"`
	Score       int    `json:"score"`
	// Currency of the credit limit (ISO 4217). Default USD.
	Currency string `json:"currency,omitempty"`
	// LenderID is the lender onboarding the customer: it gets the
	// customer relationship (lender_customers). An operator's client may
	// name any lender; a lender's own admin client creates for itself.
	LenderID string `json:"lender_id,omitempty"`
}

// errRiskTier names the allowed tiers (schemas.RiskTiers): the decisions
// job refers an application whose customer has any other tier.
var errRiskTier = errors.New("risk_tier must be " + oneOf(schemas.RiskTiers))

// oneOf lists values as "A, B or C".
func oneOf(values []string) string {
	if len(values) < 2 {
		return strings.Join(values, "")
	}
	return strings.Join(values[:len(values)-1], ", ") + " or " + values[len(values)-1]
}

func (c *NewCustomer) validate() error {
	switch {
	case !validID(c.CustomerID):
		return errors.New("customer_id must be 1-64 of [A-Za-z0-9_.:-]")
	case c.Name == "" || len(c.Name) > 200:
		return errors.New("name is required (at most 200 characters)")
	case c.Score < 300 || c.Score > 850:
		return errors.New("score must be within 300..850")
	case !schemas.ValidRiskTier(c.RiskTier):
		return errRiskTier
	case len(c.Address) > 500 || len(c.DateOfBirth) > 10:
		return errors.New("address at most 500, date_of_birth at most 10 characters")
	}
	if _, err := pii.NormalizeSSN(c.SSN); err != nil {
		return err
	}
	if c.DateOfBirth != "" && !validDOB(c.DateOfBirth) {
		return errors.New("date_of_birth must be a past date YYYY-MM-DD after 1900-01-01")
	}
	if c.Currency == "" {
		c.Currency = "USD"
	}
	if !validCurrency(c.Currency) {
		return errors.New("currency must be an ISO 4217 currency code, e.g. USD")
	}
	if c.LenderID != "" && !validID(c.LenderID) {
		return errors.New("lender_id must be 1-64 of [A-Za-z0-9_.:-]")
	}
	if a, err := money.Parse(c.CreditLimit); err != nil || a < 0 {
		return errors.New(`credit_limit must be a non-negative decimal string, e.g. "5000.00"`)
	}
	return nil
}

// CreateLender inserts a lender (used by the admin route and the dev stack).
func (s *Server) CreateLender(ctx context.Context, actor auth.Principal, l NewLender) error {
	if !validID(l.LenderID) || l.Name == "" {
		return fmt.Errorf("%w: lender_id must be 1-64 of [A-Za-z0-9_.:-] and name is required", ErrInvalid)
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO lenders (lender_id, name, rate_limit_rps, rate_burst) VALUES ($1, $2, $3, $4)",
			l.LenderID, l.Name, l.RateLimitPerSec, l.RateBurst)
		if err != nil {
			return conflictOr(err, "creating lender")
		}
		return audit.Append(ctx, tx, s.auditEntry(ctx, actor, "lender.create", "lender/"+l.LenderID, "", audit.ResultOK))
	})
}

// CreateClient registers an OAuth2 client and returns its secret (shown once).
func (s *Server) CreateClient(ctx context.Context, actor auth.Principal, c NewClient) (ClientCredentials, error) {
	if !validID(c.ClientID) || len(c.Scopes) == 0 {
		return ClientCredentials{}, fmt.Errorf("%w: client_id must be 1-64 of [A-Za-z0-9_.:-] and scopes are required", ErrInvalid)
	}
	for _, sc := range c.Scopes {
		if !knownScope(sc) {
			return ClientCredentials{}, fmt.Errorf("%w: unknown scope %q", ErrInvalid, sc)
		}
	}
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	sec := hex.EncodeToString(secret)
	sum := sha256.Sum256([]byte(sec))
	var lender *string
	if c.LenderID != "" {
		lender = &c.LenderID
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO api_clients (client_id, secret_hash, lender_id, scopes) VALUES ($1, $2, $3, $4)",
			c.ClientID, sum[:], lender, c.Scopes)
		if err != nil {
			return conflictOr(err, "creating client")
		}
		return audit.Append(ctx, tx, s.auditEntry(ctx, actor, "client.create", "client/"+c.ClientID, "", audit.ResultOK))
	})
	return ClientCredentials{ClientID: c.ClientID, ClientSecret: sec, LenderID: c.LenderID, Scopes: c.Scopes}, err
}

func knownScope(s string) bool {
	for _, k := range auth.AllScopes {
		if k == s {
			return true
		}
	}
	return false
}

// CreateCustomer stores a customer with encrypted PII and a credit profile.
func (s *Server) CreateCustomer(ctx context.Context, actor auth.Principal, c NewCustomer) error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if actor.Lender != "" {
		if c.LenderID != "" && c.LenderID != actor.Lender {
			return fmt.Errorf("%w: a lender's client creates customers for its own lender only", ErrInvalid)
		}
		c.LenderID = actor.Lender
	}
	ssn, _ := pii.NormalizeSSN(c.SSN)
	enc := func(col, v string) ([]byte, error) {
		if v == "" {
			return nil, nil
		}
		return s.keys.Encrypt(pii.Field{Table: "customers", Column: col, Row: c.CustomerID}, []byte(v))
	}
	name, err1 := enc("name_ct", c.Name)
	ssnCT, err2 := enc("ssn_ct", ssn)
	addr, err3 := enc("address_ct", c.Address)
	dob, err4 := enc("dob_ct", c.DateOfBirth)
	idx, idxVer, err5 := s.keys.BlindIndex(ssn)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO customers (customer_id, name_ct, ssn_ct, address_ct, dob_ct, ssn_index, ssn_index_key_version,
			credit_limit, risk_tier, credit_currency) VALUES ($1,$2,$3,$4,$5,$6,$7,$8::numeric,$9,$10)`,
			c.CustomerID, name, ssnCT, addr, dob, idx, int64(idxVer), c.CreditLimit, c.RiskTier, c.Currency)
		if err != nil {
			return conflictOr(err, "creating customer")
		}
		if _, err := tx.Exec(ctx, `INSERT INTO credit_profiles (customer_id, current_score, score_history)
			VALUES ($1, $2, jsonb_build_array(jsonb_build_object('score', $2::int, 'at', now())))`, c.CustomerID, c.Score); err != nil {
			return fmt.Errorf("creating credit profile: %w", err)
		}
		if c.LenderID != "" {
			if err := relate(ctx, tx, c.LenderID, c.CustomerID, basisCustomer); err != nil {
				return conflictOr(err, "relating the customer to lender "+c.LenderID)
			}
		}
		return audit.Append(ctx, tx, s.auditEntry(ctx, actor, "customer.create", "customer/"+c.CustomerID, "", audit.ResultOK))
	})
}

var (
	// ErrInvalid is returned by the admin functions for bad input.
	ErrInvalid = errors.New("api: invalid input")
	// ErrConflict is returned when the row already exists.
	ErrConflict = errors.New("api: already exists")
)

func conflictOr(err error, what string) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" {
		return fmt.Errorf("%w: %s", ErrConflict, what)
	}
	if errors.As(err, &pe) && pe.Code == "23503" {
		return fmt.Errorf("%w: %s: a referenced row does not exist", ErrInvalid, what)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (s *Server) adminError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrInvalid):
		writeProblem(w, r, http.StatusUnprocessableEntity, "invalid", err.Error())
	case errors.Is(err, ErrConflict):
		writeProblem(w, r, http.StatusConflict, "conflict", err.Error())
	default:
		s.log.Error("admin", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "internal error")
	}
}

func (s *Server) postLender(w http.ResponseWriter, r *http.Request) {
	var l NewLender
	if !decodeBody(w, r, &l) {
		return
	}
	p, _ := principalOf(r.Context())
	if err := s.CreateLender(r.Context(), p, l); err != nil {
		s.adminError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, l)
}

func (s *Server) postClient(w http.ResponseWriter, r *http.Request) {
	var c NewClient
	if !decodeBody(w, r, &c) {
		return
	}
	p, _ := principalOf(r.Context())
	creds, err := s.CreateClient(r.Context(), p, c)
	if err != nil {
		s.adminError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, creds)
}

func (s *Server) postCustomer(w http.ResponseWriter, r *http.Request) {
	var c NewCustomer
	if !decodeBody(w, r, &c) {
		return
	}
	p, _ := principalOf(r.Context())
	if err := s.CreateCustomer(r.Context(), p, c); err != nil {
		s.adminError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"customer_id": c.CustomerID})
}

// EnsureAdminClient creates an operator client with scope admin unless it
// exists; created reports whether it did (the secret is only known then).
// The local stack calls it to bootstrap its first credentials.
func (s *Server) EnsureAdminClient(ctx context.Context, clientID string) (ClientCredentials, bool, error) {
	var exists bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM api_clients WHERE client_id = $1)", clientID).Scan(&exists); err != nil {
		return ClientCredentials{}, false, fmt.Errorf("api: checking client: %w", err)
	}
	if exists {
		return ClientCredentials{ClientID: clientID}, false, nil
	}
	system := auth.Principal{Subject: "system:bootstrap"}
	c, err := s.CreateClient(ctx, system, NewClient{ClientID: clientID, Scopes: []string{auth.ScopeAdmin}})
	return c, err == nil, err
}

// validDOB reports whether s is a calendar date YYYY-MM-DD between
// 1900-01-01 and today.
func validDOB(s string) bool {
	d, err := time.Parse(time.DateOnly, s)
	return err == nil && d.Year() >= 1900 && !d.After(time.Now())
}
