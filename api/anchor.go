package api

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api/audit"
)

// anchorState is the last head this server anchored.
type anchorState struct {
	mu  sync.Mutex
	seq int64
}

// AnchorAudit signs the audit chain's current head with the PII index
// keyset (audit.AnchorDomain; the key lives in the KMS-wrapped keyset, not
// in PostgreSQL) and records it outside the database: as a record on
// AuditAnchorsTopic and as an Info log line. It does nothing when the head
// has not moved since the last anchor. The server anchors every
// AuditAnchorInterval; `loanflow audit verify --anchors` checks the chain
// against these records.
func (s *Server) AnchorAudit(ctx context.Context) (audit.Anchor, error) {
	s.anchors.mu.Lock()
	defer s.anchors.mu.Unlock()
	// Chain what writes queued first, so the anchor covers them too.
	if err := s.audit.Flush(ctx); err != nil {
		return audit.Anchor{}, err
	}
	seq, hash, err := audit.Head(ctx, s.pool)
	if err != nil || seq == 0 || seq == s.anchors.seq {
		return audit.Anchor{}, err
	}
	a := audit.Anchor{Seq: seq, Hash: hash, At: time.Now().UTC().Truncate(time.Microsecond)}
	if a.MAC, a.KeyID, err = s.keys.MAC(audit.AnchorDomain, audit.AnchorMessage(a)); err != nil {
		return a, err
	}
	s.log.Info("audit anchor", "seq", a.Seq, "hash", hex.EncodeToString(a.Hash), "at", a.At, "key_id", a.KeyID, "mac", hex.EncodeToString(a.MAC))
	b, _ := json.Marshal(a)
	rec := &kgo.Record{Topic: s.cfg.AuditAnchorsTopic, Key: []byte("audit-head"), Value: b}
	if err := s.producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return a, fmt.Errorf("api: producing the audit anchor to %s: %w", s.cfg.AuditAnchorsTopic, err)
	}
	s.anchors.seq = seq
	return a, nil
}

// ensureAnchorsTopic creates AuditAnchorsTopic (one partition, so anchors
// keep their order) unless it exists; a failure is logged, and anchoring
// reports it again at each interval.
func (s *Server) ensureAnchorsTopic(ctx context.Context) {
	if s.cfg.AuditAnchorInterval < 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(s.producer).CreateTopic(cctx, 1, -1, nil, s.cfg.AuditAnchorsTopic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		s.log.Warn("creating the audit anchors topic", "topic", s.cfg.AuditAnchorsTopic, "err", err)
	}
}

func (s *Server) anchorLoop(ctx context.Context) {
	if s.cfg.AuditAnchorInterval < 0 {
		return
	}
	t := time.NewTicker(s.cfg.AuditAnchorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := s.AnchorAudit(actx); err != nil && ctx.Err() == nil {
				s.log.Error("anchoring the audit chain", "err", err)
			}
			cancel()
		}
	}
}

// AuditKeys are the keys of the audit chain's MACs (for audit.VerifyKeyed).
func (s *Server) AuditKeys() audit.Keys { return s.keys }

// VerifyAnchorMAC checks an anchor's signature with this server's keys.
func (s *Server) VerifyAnchorMAC(a audit.Anchor) bool {
	return s.keys.VerifyMAC(audit.AnchorDomain, audit.AnchorMessage(a), a.KeyID, a.MAC)
}
