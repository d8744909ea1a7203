package audit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Anchor is a signed head of the chain, kept outside PostgreSQL (a Kafka
// topic and the API's log): whoever owns the database can recompute the
// SHA-256 chain after editing or dropping rows, but cannot sign a head,
// so every anchored row is fixed. Verify with VerifyAnchored.
type Anchor struct {
	Seq   int64     `json:"seq"`
	Hash  []byte    `json:"hash"`
	At    time.Time `json:"at"`
	KeyID uint32    `json:"key_id"`
	MAC   []byte    `json:"mac"`
}

// AnchorDomain separates anchor MACs from every other use of the key.
const AnchorDomain = "audit-anchor"

// AnchorMessage is what an anchor's MAC covers: seq, time and hash.
func AnchorMessage(a Anchor) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(a.Seq))
	b = binary.BigEndian.AppendUint64(b, uint64(a.At.UTC().UnixMicro()))
	return append(b, a.Hash...)
}

// Head returns the chain's last row (seq 0 and no hash when empty).
func Head(ctx context.Context, q Querier) (int64, []byte, error) {
	var seq int64
	var hash []byte
	err := q.QueryRow(ctx, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").Scan(&seq, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("audit: reading the head: %w", err)
	}
	return seq, hash, nil
}

// VerifyAnchored walks the chain (VerifyKeyed with keys; Verify when keys
// is nil) and checks it against anchors:
// each anchor's MAC must verify (verifyMAC), the anchored row must still
// exist (else the log was truncated) and still have the anchored hash
// (else a row at or before it was rewritten and the chain recomputed).
func VerifyAnchored(ctx context.Context, q interface {
	Querier
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, anchors []Anchor, verifyMAC func(Anchor) bool, keys Keys) (Report, error) {
	rep, err := verifyRows(ctx, q, keys)
	if err != nil || !rep.OK {
		return rep, err
	}
	last := rep.Rows
	for _, a := range anchors {
		if !verifyMAC(a) {
			return Report{Rows: rep.Rows, BrokenSeq: a.Seq, Reason: "an anchor's signature does not verify (forged anchor, or the wrong keys)"}, nil
		}
		if a.Seq > last {
			return Report{Rows: rep.Rows, BrokenSeq: a.Seq, Reason: fmt.Sprintf("truncated: row %d was anchored at %s but the log ends at row %d", a.Seq, a.At.UTC().Format(time.RFC3339), last)}, nil
		}
		var hash []byte
		if err := q.QueryRow(ctx, "SELECT hash FROM audit_log WHERE seq = $1", a.Seq).Scan(&hash); err != nil {
			return rep, fmt.Errorf("audit: reading anchored row %d: %w", a.Seq, err)
		}
		if string(hash) != string(a.Hash) {
			return Report{Rows: rep.Rows, BrokenSeq: a.Seq, Reason: fmt.Sprintf("rewritten: row %d's hash differs from its anchor of %s (a row at or before it was changed and the chain recomputed)", a.Seq, a.At.UTC().Format(time.RFC3339))}, nil
		}
	}
	return rep, nil
}
