package api

import (
	"context"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
)

// loginLimits throttles the credential endpoints (/oauth/token,
// /dashboard/login, /operator) per client id and per source address, so
// neither one client's secret nor the endpoint as a whole can be hammered
// from one place. Bounded maps; full ones start over.
type loginLimits struct {
	mu       sync.Mutex
	byClient map[string]*rate.Limiter
	byAddr   map[string]*rate.Limiter
}

func (l *loginLimits) get(m *map[string]*rate.Limiter, key string, rps float64, burst, max int) *rate.Limiter {
	if *m == nil || len(*m) >= max {
		*m = make(map[string]*rate.Limiter)
	}
	lim, ok := (*m)[key]
	if !ok {
		lim = rate.NewLimiter(rate.Limit(rps), burst)
		(*m)[key] = lim
	}
	return lim
}

// sourceAddr is the connection's remote host (no forwarding header is
// trusted: one could name any address).
func sourceAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// allowLogin takes a token from the address's bucket and, when clientID
// is known, from the client's; it writes a 429 and audits the refusal
// when either is empty.
func (s *Server) allowLogin(w http.ResponseWriter, r *http.Request, action, clientID string) bool {
	addr := sourceAddr(r)
	s.logins.mu.Lock()
	byAddr := s.logins.get(&s.logins.byAddr, addr, s.cfg.LoginRatePerSec*5, s.cfg.LoginBurst*5, s.cfg.MaxLenders)
	var byClient *rate.Limiter
	if clientID != "" {
		byClient = s.logins.get(&s.logins.byClient, clientID, s.cfg.LoginRatePerSec, s.cfg.LoginBurst, s.cfg.MaxLenders)
	}
	s.logins.mu.Unlock()
	wait := time.Duration(0)
	ok := true
	for _, lim := range []*rate.Limiter{byAddr, byClient} {
		if lim == nil {
			continue
		}
		res := lim.Reserve()
		if d := res.Delay(); !res.OK() || d > 0 {
			res.Cancel()
			ok, wait = false, max(wait, d, time.Second)
		}
	}
	if ok {
		return true
	}
	s.metrics.limited.Inc()
	s.log.Info("login throttled", "action", action, "client_id", auditID(clientID), "source", addr, "request_id", requestID(r.Context()))
	s.auditLogin(r.Context(), action, clientID, "", audit.ResultDenied)
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	writeProblem(w, r, http.StatusTooManyRequests, "rate-limited", "too many login attempts from this client or address; retry later")
	return false
}

// auditID is a client id as it may be logged and audited (an id that is
// not an id is quoted, bounded).
func auditID(id string) string { return resourceOf("", id) }

// auditLogin records a credential use (token issued or refused), best
// effort: a login is not refused because the audit log is down, but the
// failure is logged.
func (s *Server) auditLogin(ctx context.Context, action, clientID, lender, result string) {
	e := s.auditEntry(ctx, auth.Principal{Subject: "client:" + auditID(clientID), Lender: lender}, action, "client/"+auditID(clientID), "", result)
	if err := s.audit.Append(context.WithoutCancel(ctx), e); err != nil {
		s.log.Error("audit append", "action", action, "err", err)
	}
}

// loginOutcome logs (Info) and audits a credential check.
func (s *Server) loginOutcome(r *http.Request, action, clientID, lender string, err error) {
	result := audit.ResultOK
	msg := "token issued"
	if err != nil {
		result, msg = audit.ResultDenied, "login refused"
	}
	s.log.Info(msg, "action", action, "client_id", auditID(clientID), "source", sourceAddr(r), "request_id", requestID(r.Context()))
	s.auditLogin(r.Context(), action, clientID, lender, result)
}
