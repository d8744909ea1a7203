package api

import (
	"context"
	"fmt"
	"time"
)

// ExpireIdempotencyKeys deletes the idempotency keys older than
// IdempotencyTTL and returns how many.
func (s *Server) ExpireIdempotencyKeys(ctx context.Context) (int64, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 second'", s.cfg.IdempotencyTTL.Seconds())
	if err != nil {
		return 0, fmt.Errorf("api: expiring idempotency keys: %w", err)
	}
	return tag.RowsAffected(), nil
}

func (s *Server) expireIdempotencyKeys(ctx context.Context) {
	t := time.NewTicker(max(s.cfg.IdempotencyTTL/24, time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := s.ExpireIdempotencyKeys(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("expiring idempotency keys", "err", err)
			} else if n > 0 {
				s.log.Info("idempotency keys expired", "count", n)
			}
		}
	}
}
