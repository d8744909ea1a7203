package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
)

// Lender is one row of GET /v1/admin/lenders.
type Lender struct {
	LenderID        string    `json:"lender_id"`
	Name            string    `json:"name"`
	RateLimitPerSec *float64  `json:"rate_limit_per_sec,omitempty"`
	RateBurst       *int      `json:"rate_burst,omitempty"`
	Clients         int       `json:"clients"`         // enabled clients
	RevokedClients  int       `json:"revoked_clients"` // disabled clients
	CreatedAt       time.Time `json:"created_at"`
}

// Client is one row of GET /v1/admin/clients; the secret is never shown
// again after its creation.
type Client struct {
	ClientID  string    `json:"client_id"`
	LenderID  string    `json:"lender_id,omitempty"`
	Scopes    []string  `json:"scopes"`
	Revoked   bool      `json:"revoked"`
	CreatedAt time.Time `json:"created_at"`
}

// ErrNotFound is returned for an admin operation on a row that does not
// exist.
var ErrNotFound = errors.New("api: not found")

// maxListed bounds an admin listing.
const maxListed = 10_000

// ListLenders returns every lender with its client counts.
func (s *Server) ListLenders(ctx context.Context) ([]Lender, error) {
	rows, err := s.pool.Query(ctx, `SELECT l.lender_id, l.name, l.rate_limit_rps, l.rate_burst, l.created_at,
	        count(c.client_id) FILTER (WHERE NOT c.disabled), count(c.client_id) FILTER (WHERE c.disabled)
	   FROM lenders l LEFT JOIN api_clients c ON c.lender_id = l.lender_id
	  GROUP BY l.lender_id ORDER BY l.lender_id LIMIT $1`, maxListed)
	if err != nil {
		return nil, fmt.Errorf("listing lenders: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Lender, error) {
		var l Lender
		err := r.Scan(&l.LenderID, &l.Name, &l.RateLimitPerSec, &l.RateBurst, &l.CreatedAt, &l.Clients, &l.RevokedClients)
		return l, err
	})
}

// ListClients returns the OAuth2 clients, of one lender when lender is set.
func (s *Server) ListClients(ctx context.Context, lender string) ([]Client, error) {
	rows, err := s.pool.Query(ctx, `SELECT client_id, coalesce(lender_id, ''), scopes, disabled, created_at FROM api_clients
	  WHERE $1 = '' OR lender_id = $1 ORDER BY client_id LIMIT $2`, lender, maxListed)
	if err != nil {
		return nil, fmt.Errorf("listing clients: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Client, error) {
		var c Client
		err := r.Scan(&c.ClientID, &c.LenderID, &c.Scopes, &c.Revoked, &c.CreatedAt)
		return c, err
	})
}

// RevokeClient disables a client: it gets no new token (tokens it holds
// expire with their lifetime). ErrNotFound when there is no such client.
func (s *Server) RevokeClient(ctx context.Context, actor auth.Principal, clientID string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE api_clients SET disabled = true WHERE client_id = $1", clientID)
		if err != nil {
			return fmt.Errorf("revoking client: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: no client %s", ErrNotFound, clientID)
		}
		return audit.Append(ctx, tx, s.auditEntry(ctx, actor, "client.revoke", "client/"+clientID, "", audit.ResultOK))
	})
}

// RevokeLender disables every client of a lender and returns how many.
func (s *Server) RevokeLender(ctx context.Context, actor auth.Principal, lender string) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM lenders WHERE lender_id = $1)", lender).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return fmt.Errorf("%w: no lender %s", ErrNotFound, lender)
		}
		tag, err := tx.Exec(ctx, "UPDATE api_clients SET disabled = true WHERE lender_id = $1 AND NOT disabled", lender)
		if err != nil {
			return fmt.Errorf("revoking the clients of %s: %w", lender, err)
		}
		n = tag.RowsAffected()
		return audit.Append(ctx, tx, s.auditEntry(ctx, actor, "lender.revoke", "lender/"+lender, "", audit.ResultOK))
	})
	return n, err
}

func (s *Server) listLenders(w http.ResponseWriter, r *http.Request) {
	ls, err := s.ListLenders(r.Context())
	if err != nil {
		s.adminError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ls)
}

func (s *Server) listClients(w http.ResponseWriter, r *http.Request) {
	lender := r.URL.Query().Get("lender_id")
	if lender != "" && !validID(lender) {
		writeProblem(w, r, http.StatusUnprocessableEntity, "invalid", "lender_id must be 1-64 of [A-Za-z0-9_.:-]")
		return
	}
	cs, err := s.ListClients(r.Context(), lender)
	if err != nil {
		s.adminError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, cs)
}

func (s *Server) revokeClient(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validID(id) {
		writeProblem(w, r, http.StatusNotFound, "not-found", "no such client")
		return
	}
	p, _ := principalOf(r.Context())
	if err := s.RevokeClient(r.Context(), p, id); err != nil {
		s.revokeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"client_id": id, "revoked": true})
}

func (s *Server) revokeLender(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validID(id) {
		writeProblem(w, r, http.StatusNotFound, "not-found", "no such lender")
		return
	}
	p, _ := principalOf(r.Context())
	n, err := s.RevokeLender(r.Context(), p, id)
	if err != nil {
		s.revokeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"lender_id": id, "revoked_clients": n})
}

func (s *Server) revokeError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrNotFound) {
		writeProblem(w, r, http.StatusNotFound, "not-found", err.Error())
		return
	}
	s.adminError(w, r, err)
}
