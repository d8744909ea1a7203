package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
)

// Portfolio is the body of GET /v1/portfolio.
type Portfolio struct {
	LenderID string   `json:"lender_id"`
	Current  *Metric  `json:"current"`           // newest window
	Windows  []Metric `json:"windows,omitempty"` // recent windows, oldest first
	Source   string   `json:"source"`            // stream | database | none
}

func (s *Server) portfolioOf(ctx context.Context, lender string) (Portfolio, error) {
	out := Portfolio{LenderID: lender, Source: "none"}
	if ms := s.hub.metricsOf(lender); len(ms) > 0 {
		out.Windows, out.Current, out.Source = ms, &ms[len(ms)-1], "stream"
		return out, nil
	}
	ms, err := s.metricsFromTable(ctx, lender)
	if err != nil || len(ms) == 0 {
		return out, err
	}
	out.Windows, out.Current, out.Source = ms, &ms[len(ms)-1], "database"
	return out, nil
}

// metricsFromTable reads the portfolio job's analytics table.
func (s *Server) metricsFromTable(ctx context.Context, lender string) ([]Metric, error) {
	rows, err := s.pool.Query(ctx, `SELECT window_start, window_end, originations, originated_amount::text, approvals, declines,
		refers, outstanding_balance::text, delinquency_rate::float8, default_rate::float8, updated_at
		FROM portfolio_metrics WHERE lender_id = $1 ORDER BY window_start DESC LIMIT 60`, lender)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Metric
	for rows.Next() {
		m := Metric{LenderID: lender}
		if err := rows.Scan(&m.WindowStart, &m.WindowEnd, &m.Originations, &m.OriginatedAmount, &m.Approvals, &m.Declines,
			&m.Refers, &m.OutstandingBalance, &m.DelinquencyRate, &m.DefaultRate, &m.ComputedAt); err != nil {
			return nil, err
		}
		out = append([]Metric{m}, out...)
	}
	return out, rows.Err()
}

func (s *Server) getPortfolio(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	lender := p.Lender
	if q := r.URL.Query().Get("lender"); q != "" && q != p.Lender {
		if !p.Scopes[auth.ScopeAdmin] || !validID(q) {
			s.notFoundAudited(w, r, "portfolio.read", resourceOf("portfolio/lender=", q))
			return
		}
		lender = q
	}
	out, err := s.portfolioOf(r.Context(), lender)
	if err != nil {
		s.log.Error("portfolio", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not read portfolio metrics")
		return
	}
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "portfolio.read", "portfolio/lender="+lender, "", audit.ResultOK)) {
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// dashboardEvents streams metrics and decisions for the dashboard,
// starting with the current state.
func (s *Server) dashboardEvents(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	if p.Lender == "" {
		writeProblem(w, r, http.StatusForbidden, "no-lender", "the dashboard is per lender")
		return
	}
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "dashboard.stream", "portfolio/lender="+p.Lender, "", audit.ResultOK)) {
		return
	}
	var initial []event
	pf, _ := s.portfolioOf(r.Context(), p.Lender)
	for _, m := range pf.Windows {
		initial = append(initial, event{name: "metric", data: m})
	}
	recent := s.hub.recent(p.Lender, 20)
	for i := len(recent) - 1; i >= 0; i-- {
		initial = append(initial, event{name: "decision", data: recent[i]})
	}
	s.serveEvents(w, r, p.Lender, map[string]bool{"decision": true, "metric": true}, initial)
}

const dashboardCookie = "loanflow_token"

// dashboardLogin exchanges client credentials for a token kept in an
// HttpOnly, SameSite=Strict cookie, so the page and its event stream are
// authenticated without exposing the token to scripts.
func (s *Server) dashboardLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		writeProblem(w, r, http.StatusBadRequest, "malformed-body", "form expected")
		return
	}
	if !csrfOK(r) {
		writeProblem(w, r, http.StatusForbidden, "csrf", "sign in from the Loanflow sign-in page (its form token is missing or stale)")
		return
	}
	id := r.PostForm.Get("client_id")
	if !s.allowLogin(w, r, "dashboard.login", id) {
		return
	}
	// The session holds only what its page needs: portfolio:read for the
	// dashboard, admin for the operator page; never the client's other
	// scopes.
	next, scope := "/dashboard", auth.ScopePortfolioRead
	if r.PostForm.Get("next") == "operator" {
		next, scope = "/operator", auth.ScopeAdmin
	}
	tok, lender, err := s.sessionToken(r.Context(), id, r.PostForm.Get("client_secret"), scope)
	s.loginOutcome(r, "dashboard.login", id, lender, err)
	if err != nil {
		http.Redirect(w, r, next+"?error=login", http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: dashboardCookie, Value: tok, Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.cfg.TokenTTL / time.Second)})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// sessionToken issues a token with scope only, for a client that holds it.
func (s *Server) sessionToken(ctx context.Context, id, secret, scope string) (string, string, error) {
	if s.issuer == nil {
		return "", "", errors.New("api: the dev issuer is disabled")
	}
	g, err := s.authenticateClient(ctx, id, secret)
	if err != nil {
		return "", "", err
	}
	if g.Scopes, _ = narrowScopes(g.Scopes, scope); len(g.Scopes) == 0 {
		return "", g.Lender, errBadClient
	}
	tok, _, err := s.issuer.Issue(g)
	return tok, g.Lender, err
}

// dashboardPage serves a lender's dashboard: sign-in without a session,
// a 403 page to a session of no lender (an operator's) or without
// portfolio:read.
func (s *Server) dashboardPage(w http.ResponseWriter, r *http.Request) {
	p, ok := s.pageSession(w, r, "dashboard")
	if !ok {
		return
	}
	if p.Lender == "" || !p.Has(auth.ScopePortfolioRead) {
		s.forbiddenPage(w, r, p, "The portfolio dashboard shows one lender's decisions and figures, so it needs a lender's sign-in (a client of the lender with scope portfolio:read).")
		return
	}
	s.servePage(w, "dashboard.html")
}

func (s *Server) servePage(w http.ResponseWriter, name string) {
	b, err := webFS.ReadFile("web/" + name)
	if err != nil {
		http.Error(w, "page missing", http.StatusInternalServerError)
		return
	}
	if name == "login.html" {
		s.setCSRF(w)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", pageCSP(b))
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}
