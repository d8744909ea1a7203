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
	// KeyID is the index key whose HMAC Hash is; nil for a row written
	// before the chain was keyed (Hash is then SHA-256).
	KeyID *uint32
}

func putField(b *bytes.Buffer, s string) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(s)))
	b.Write(n[:])
	b.WriteString(s)
}

// ChainMessage is what a row's hash covers: the previous row's hash and the
// canonical row (each field length-prefixed: seq, at in UTC microseconds,
// actor, lender, action, resource, purpose, result, request id).
func ChainMessage(prev []byte, seq int64, e Entry) []byte {
	var b bytes.Buffer
	b.Grow(len(prev) + 64 + len(e.Actor) + len(e.Lender) + len(e.Action) + len(e.Resource) + len(e.Purpose) + len(e.Result) + len(e.RequestID))
	b.Write(prev)
	putField(&b, strconv.FormatInt(seq, 10))
	putField(&b, strconv.FormatInt(e.At.UTC().UnixMicro(), 10))
	for _, f := range []string{e.Actor, e.Lender, e.Action, e.Resource, e.Purpose, e.Result, e.RequestID} {
		putField(&b, f)
	}
	return b.Bytes()
}

// ComputeHash returns SHA-256(prev || canonical(row)): the hash of a row
// written before the chain was keyed (migration 00006).
func ComputeHash(prev []byte, seq int64, e Entry) []byte {
	sum := sha256.Sum256(ChainMessage(prev, seq, e))
	return sum[:]
}

// ChainDomain separates the keyed chain's MACs from every other use of the
// index key (blind indexes, AnchorDomain).
const ChainDomain = "audit-chain"

// Keys computes and checks the keyed chain's MACs: HMAC-SHA-256 under a
// key the database does not hold (pii.Keyring, its KMS-wrapped index
// keyset).
type Keys interface {
	// MAC returns the tag of msg under the primary key and that key's id.
	MAC(domain string, msg []byte) ([]byte, uint32, error)
	// VerifyMAC reports whether tag is msg's tag under key keyID.
	VerifyMAC(domain string, msg []byte, keyID uint32, tag []byte) bool
}

// Querier runs a statement: a pgx.Tx, *pgx.Conn or *pgxpool.Pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Append records entries inside tx: they are queued in audit_pending with
// the transaction (audit_append, migration 00006), so they commit or roll
// back with it, and the API's Journal chains them with the key shortly
// after. The audit trail is audit_log plus the entries still queued.
func Append(ctx context.Context, tx pgx.Tx, entries ...Entry) error {
	return appendTo(ctx, tx, entries)
}

// AppendSQL returns a SQL expression that records (queues, as Append)
// entries when it is evaluated, with its arguments numbered from $first, for statements that
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
		e = stored(e, now)
		at[i] = e.At
		for j, v := range []string{e.Actor, e.Lender, e.Action, e.Resource, e.Purpose, e.Result, e.RequestID} {
			f[j][i] = v
		}
	}
	return []any{at, f[0], f[1], f[2], f[3], f[4], f[5], f[6]}
}

// stored returns e as PostgreSQL stores it (what the chain's hash covers):
// At in UTC microseconds (now when zero), text fields storable.
func stored(e Entry, now time.Time) Entry {
	if e.At.IsZero() {
		e.At = now
	}
	e.At = e.At.UTC().Truncate(time.Microsecond)
	e.Actor, e.Lender, e.Action, e.Resource = storable(e.Actor), storable(e.Lender), storable(e.Action), storable(e.Resource)
	e.Purpose, e.Result, e.RequestID = storable(e.Purpose), storable(e.Result), storable(e.RequestID)
	return e
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
	Keyed     int64  // rows of the keyed chain (their MACs checked when Keys were given)
	OK        bool   // the whole chain verified
	BrokenSeq int64  // first broken row (when !OK)
	Reason    string // what is wrong with it
	// Unauthenticated: keyed rows were only checked for linkage (no Keys):
	// a chain recomputed by the database's owner would pass.
	Unauthenticated bool
}

// Verify walks the whole chain in seq order without the key: the unkeyed
// prefix's SHA-256 hashes and every row's linkage. Alone it cannot see a
// dropped tail or a chain recomputed by the database's owner: use
// VerifyKeyed (the key) and VerifyAnchored (the signed heads).
func Verify(ctx context.Context, pool *pgxpool.Pool) (Report, error) {
	return verifyRows(ctx, pool, nil)
}

// VerifyKeyed walks the chain and checks every keyed row's MAC with keys:
// a row rewritten by whoever owns the database is found even when the
// chain after it was recomputed, because the MACs cannot be. It refuses an
// unkeyed row after a keyed one and a non-empty chain without any keyed
// row (a chain rewritten in the unkeyed form).
func VerifyKeyed(ctx context.Context, q Rows, keys Keys) (Report, error) {
	return verifyRows(ctx, q, keys)
}

// Rows runs a query: a pgx.Tx, *pgx.Conn or *pgxpool.Pool.
type Rows interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func verifyRows(ctx context.Context, q Rows, keys Keys) (Report, error) {
	rows, err := q.Query(ctx, `SELECT seq, at, actor, lender_id, action, resource, purpose, result, request_id, prev_hash, hash, key_id
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
		var kid *int64
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Lender, &r.Action, &r.Resource, &r.Purpose, &r.Result, &r.RequestID, &r.PrevHash, &r.Hash, &kid); err != nil {
			return rep, fmt.Errorf("audit: scanning row: %w", err)
		}
		if kid != nil {
			k := uint32(*kid)
			r.KeyID = &k
		}
		rep.Rows++
		if reason := check(r, want, prev, rep.Keyed > 0, keys); reason != "" {
			rep.OK, rep.BrokenSeq, rep.Reason = false, r.Seq, reason
			return rep, nil
		}
		if r.KeyID != nil {
			rep.Keyed++
		}
		prev, want = r.Hash, r.Seq+1
	}
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("audit: reading log: %w", err)
	}
	rep.Unauthenticated = keys == nil && rep.Keyed > 0
	if keys != nil && rep.Rows > 0 && rep.Keyed == 0 {
		rep.OK, rep.BrokenSeq = false, rep.Rows
		rep.Reason = "the chain has no keyed row: it was rewritten in the unkeyed form, or no API has run since migration 00006 (its journal writes the cut-over row)"
	}
	return rep, nil
}

func check(r Row, wantSeq int64, prev []byte, keyed bool, keys Keys) string {
	switch {
	case r.Seq != wantSeq:
		return fmt.Sprintf("seq %d follows %d (rows missing or inserted)", r.Seq, wantSeq-1)
	case !bytes.Equal(r.PrevHash, prev):
		return "prev_hash does not match the previous row's hash"
	case r.KeyID == nil && keyed:
		return "an unkeyed row after the chain was keyed (rows rewritten without the key)"
	case r.KeyID == nil && !bytes.Equal(r.Hash, ComputeHash(prev, r.Seq, r.Entry)):
		return "hash does not match the row's contents (row edited)"
	case r.KeyID != nil && keys != nil && !keys.VerifyMAC(ChainDomain, ChainMessage(prev, r.Seq, r.Entry), *r.KeyID, r.Hash):
		return fmt.Sprintf("MAC under key %d does not match the row's contents (row edited, or the chain recomputed without the key)", *r.KeyID)
	}
	return ""
}
