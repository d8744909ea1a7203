package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
)

// errRevoked: the token's client has been disabled.
var errRevoked = errors.New("api: the token's client is disabled")

// revocations remembers, per token subject (the client id of dev-issued
// tokens), whether its client is disabled, for at most RevocationStaleness:
// a disabled client's tokens stop working within that time on every API
// instance, at one PostgreSQL read per subject and interval. A subject
// with no api_clients row (an external issuer's) is not revoked here; its
// tokens are bounded by MaxTokenLifetime.
type revocations struct {
	mu sync.Mutex
	m  map[string]revocationEntry
}

type revocationEntry struct {
	disabled bool
	at       time.Time
}

// authenticate validates a bearer token and checks its client is not
// disabled.
func (s *Server) authenticate(ctx context.Context, tok string) (auth.Principal, error) {
	p, err := s.validator.Validate(ctx, tok)
	if err != nil {
		return p, err
	}
	disabled, err := s.clientDisabled(ctx, p.Subject)
	if err != nil {
		return auth.Principal{}, err
	}
	if disabled {
		return auth.Principal{}, errRevoked
	}
	return p, nil
}

func (s *Server) clientDisabled(ctx context.Context, subject string) (bool, error) {
	now := time.Now()
	s.revoked.mu.Lock()
	e, ok := s.revoked.m[subject]
	s.revoked.mu.Unlock()
	if ok && now.Sub(e.at) < s.cfg.RevocationStaleness {
		return e.disabled, nil
	}
	var disabled bool
	err := s.pool.QueryRow(ctx, "SELECT disabled FROM api_clients WHERE client_id = $1", subject).Scan(&disabled)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		if ok {
			return e.disabled, nil // PostgreSQL unreachable: the last answer
		}
		return false, fmt.Errorf("api: checking the token's client: %w", err)
	}
	s.revoked.mu.Lock()
	if s.revoked.m == nil || len(s.revoked.m) >= s.cfg.MaxLenders*10 {
		s.revoked.m = make(map[string]revocationEntry)
	}
	s.revoked.m[subject] = revocationEntry{disabled: disabled, at: now}
	s.revoked.mu.Unlock()
	return disabled, nil
}

// DisableClient disables an OAuth client: it gets no new tokens, and its
// tokens stop working within RevocationStaleness on every instance (at
// once on this one).
func (s *Server) DisableClient(ctx context.Context, actor auth.Principal, clientID string) error {
	if !validID(clientID) {
		return fmt.Errorf("%w: client id must be 1-64 of [A-Za-z0-9_.:-]", ErrInvalid)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE api_clients SET disabled = true WHERE client_id = $1", clientID)
		if err != nil {
			return fmt.Errorf("disabling client: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return errNoClient
		}
		return audit.Append(ctx, tx, s.auditEntry(ctx, actor, "client.disable", "client/"+clientID, "", audit.ResultOK))
	})
	if err == nil {
		s.revoked.mu.Lock()
		delete(s.revoked.m, clientID)
		s.revoked.mu.Unlock()
	}
	return err
}

var errNoClient = errors.New("api: no such client")

func (s *Server) postDisableClient(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	err := s.DisableClient(r.Context(), p, r.PathValue("id"))
	if errors.Is(err, errNoClient) {
		writeProblem(w, r, http.StatusNotFound, "not-found", "no such client")
		return
	}
	if err != nil {
		s.adminError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"client_id": r.PathValue("id"), "disabled": true})
}
