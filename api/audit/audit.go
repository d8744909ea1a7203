package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	// ErrClosed is returned by a closed Writer.
	ErrClosed = errors.New("audit: writer closed")
	// ErrBusy is returned when the Writer's queue is full (retryable).
	ErrBusy = errors.New("audit: queue full")
)

// lockKey is the advisory lock that serializes appenders.
const lockKey = 0x4c46_4155_4449_5401

// Results.
const (
	ResultOK     = "ok"
	ResultDenied = "denied"
	ResultError  = "error"
)

// Entry is one audited access.
type Entry struct {
	Actor     string // token subject (client id)
	Lender    string // lender of the caller
	Action    string // e.g. loan.update, credit_profile.read
	Resource  string // e.g. loan/<id>
	Purpose   string // permissible-purpose code for credit pulls
	Result    string // ok | denied | error
	RequestID string
	At        time.Time // set by Append when zero
}

// Row is a stored entry with its chain fields.
type Row struct {
	Seq int64
	Entry
	PrevHash []byte
	Hash     []byte
}

func putField(b *bytes.Buffer, s string) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(s)))
	b.Write(n[:])
	b.WriteString(s)
}

// ComputeHash returns SHA-256(prev || canonical(row)).
func ComputeHash(prev []byte, seq int64, e Entry) []byte {
	var b bytes.Buffer
	b.Write(prev)
	putField(&b, strconv.FormatInt(seq, 10))
	putField(&b, strconv.FormatInt(e.At.UTC().UnixMicro(), 10))
	for _, f := range []string{e.Actor, e.Lender, e.Action, e.Resource, e.Purpose, e.Result, e.RequestID} {
		putField(&b, f)
	}
	sum := sha256.Sum256(b.Bytes())
	return sum[:]
}

// Append appends entries inside tx, after taking the chain lock. Call it
// as late as possible in the transaction: the lock is held until commit.
func Append(ctx context.Context, tx pgx.Tx, entries ...Entry) error {
	if len(entries) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockKey)); err != nil {
		return fmt.Errorf("audit: locking chain: %w", err)
	}
	var seq int64
	prev := []byte{}
	err := tx.QueryRow(ctx, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").Scan(&seq, &prev)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("audit: reading chain head: %w", err)
	}
	rows := make([][]any, 0, len(entries))
	now := time.Now()
	for _, e := range entries {
		if e.At.IsZero() {
			e.At = now
		}
		e.At = e.At.UTC().Truncate(time.Microsecond)
		seq++
		h := ComputeHash(prev, seq, e)
		rows = append(rows, []any{seq, e.At, e.Actor, e.Lender, e.Action, e.Resource, e.Purpose, e.Result, e.RequestID, prev, h})
		prev = h
	}
	cols := []string{"seq", "at", "actor", "lender_id", "action", "resource", "purpose", "result", "request_id", "prev_hash", "hash"}
	if len(rows) == 1 {
		_, err = tx.Exec(ctx, `INSERT INTO audit_log (seq, at, actor, lender_id, action, resource, purpose, result, request_id, prev_hash, hash)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)`, rows[0]...)
	} else {
		_, err = tx.CopyFrom(ctx, pgx.Identifier{"audit_log"}, cols, pgx.CopyFromRows(rows))
	}
	if err != nil {
		return fmt.Errorf("audit: inserting %d rows: %w", len(rows), err)
	}
	return nil
}

// Report is the outcome of Verify.
type Report struct {
	Rows      int64  // rows checked
	OK        bool   // the whole chain verified
	BrokenSeq int64  // first broken row (when !OK)
	Reason    string // what is wrong with it
}

// Verify walks the whole chain in seq order.
func Verify(ctx context.Context, pool *pgxpool.Pool) (Report, error) {
	rows, err := pool.Query(ctx, `SELECT seq, at, actor, lender_id, action, resource, purpose, result, request_id, prev_hash, hash
		FROM audit_log ORDER BY seq`)
	if err != nil {
		return Report{}, fmt.Errorf("audit: reading log: %w", err)
	}
	defer rows.Close()
	rep := Report{OK: true}
	prev := []byte{}
	want := int64(1)
	for rows.Next() {
		var r Row
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Lender, &r.Action, &r.Resource, &r.Purpose, &r.Result, &r.RequestID, &r.PrevHash, &r.Hash); err != nil {
			return rep, fmt.Errorf("audit: scanning row: %w", err)
		}
		rep.Rows++
		if reason := check(r, want, prev); reason != "" {
			rep.OK, rep.BrokenSeq, rep.Reason = false, r.Seq, reason
			return rep, nil
		}
		prev, want = r.Hash, r.Seq+1
	}
	return rep, rows.Err()
}

func check(r Row, wantSeq int64, prev []byte) string {
	switch {
	case r.Seq != wantSeq:
		return fmt.Sprintf("seq %d follows %d (rows missing or inserted)", r.Seq, wantSeq-1)
	case !bytes.Equal(r.PrevHash, prev):
		return "prev_hash does not match the previous row's hash"
	case !bytes.Equal(r.Hash, ComputeHash(prev, r.Seq, r.Entry)):
		return "hash does not match the row's contents (row edited)"
	}
	return ""
}
