package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	// ErrClosed is returned by a closed Writer.
	ErrClosed = errors.New("audit: writer closed")
	// ErrBusy is returned when the Writer's queue is full (retryable).
	ErrBusy = errors.New("audit: queue full")
)

// LockKey is the transaction-scoped advisory lock that serializes
// appenders (audit_append takes it; migration 00002 holds the same value).
const LockKey = 0x4c46_4155_4449_5401

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

// Querier runs a statement: a pgx.Tx, *pgx.Conn or *pgxpool.Pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Append appends entries inside tx: one statement (audit_append) takes the
// chain lock, reads the head and inserts the hash-chained rows. Call it as
// late as possible in the transaction: the lock is held until commit.
func Append(ctx context.Context, tx pgx.Tx, entries ...Entry) error {
	return appendTo(ctx, tx, entries)
}

// AppendSQL returns a SQL expression that appends entries when it is
// evaluated, with its arguments numbered from $first, for statements that
// must write and audit in one round trip (e.g. a data-modifying WITH whose
// rows select the expression, so only a write that happened is audited).
func AppendSQL(first int, entries ...Entry) (string, []any) {
	cols := columns(entries)
	ph := make([]string, len(cols))
	types := []string{"timestamptz[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]"}
	for i := range cols {
		ph[i] = "$" + strconv.Itoa(first+i) + "::" + types[i]
	}
	return "audit_append(" + strings.Join(ph, ", ") + ")", cols
}

// columns turns entries into the argument arrays of audit_append.
func columns(entries []Entry) []any {
	n := len(entries)
	at := make([]time.Time, n)
	f := make([][]string, 7)
	for i := range f {
		f[i] = make([]string, n)
	}
	now := time.Now()
	for i, e := range entries {
		if e.At.IsZero() {
			e.At = now
		}
		at[i] = e.At.UTC().Truncate(time.Microsecond)
		for j, v := range []string{e.Actor, e.Lender, e.Action, e.Resource, e.Purpose, e.Result, e.RequestID} {
			f[j][i] = storable(v)
		}
	}
	return []any{at, f[0], f[1], f[2], f[3], f[4], f[5], f[6]}
}

// storable returns v, or v quoted as ASCII when PostgreSQL text cannot
// hold it (NUL or invalid UTF-8): a value from a request must not make the
// audit write, and with it the request, fail.
func storable(v string) string {
	if utf8.ValidString(v) && strings.IndexByte(v, 0) < 0 {
		return v
	}
	return strconv.QuoteToASCII(v)
}

func appendTo(ctx context.Context, q Querier, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	expr, args := AppendSQL(1, entries...)
	var last *int64
	if err := q.QueryRow(ctx, "SELECT "+expr, args...).Scan(&last); err != nil {
		return fmt.Errorf("audit: appending %d rows: %w", len(entries), err)
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

// Verify walks the whole chain in seq order. Alone it cannot see a
// dropped tail or a chain recomputed by the database's owner: use
// VerifyAnchored with the signed heads.
func Verify(ctx context.Context, pool *pgxpool.Pool) (Report, error) { return verifyRows(ctx, pool) }

func verifyRows(ctx context.Context, pool interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) (Report, error) {
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
