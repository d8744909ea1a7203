package postgres

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// This file decodes pgoutput protocol version 1 messages. pglogrepl carries
// the replication protocol (slots, START_REPLICATION, standby status); its
// message decoders index their input without bounds checks and copy tuple
// data byte by byte, so the reader decodes the logical messages itself:
// every read is bounds-checked (a malformed message is an error, never a
// panic) and tuple values alias the message buffer.

// pgEpoch is 2000-01-01, the zero of PostgreSQL timestamps.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Tuple column kinds of pgoutput.
const (
	kindNull     = 'n'
	kindUnchange = 'u' // unchanged TOASTed value, not sent
	kindText     = 't'
	kindBinary   = 'b'
)

// colValue is one column of a tuple: its kind and, for text and binary,
// its bytes (aliasing the message).
type colValue struct {
	kind byte
	data []byte
}

type msgBegin struct {
	finalLSN   pglogrepl.LSN
	commitTime time.Time
	xid        uint32
}

type msgCommit struct {
	commitLSN  pglogrepl.LSN
	endLSN     pglogrepl.LSN
	commitTime time.Time
}

type msgRelation struct {
	id              uint32
	namespace, name string
	replicaIdentity byte
	columns         []relColumn
}

type relColumn struct {
	key    bool
	name   string
	typOID uint32
	typMod int32
}

type msgType struct {
	oid             uint32
	namespace, name string
}

type msgInsert struct {
	rel uint32
	new []colValue
}

type msgUpdate struct {
	rel     uint32
	oldKind byte // 0, 'K' or 'O'
	old     []colValue
	new     []colValue
}

type msgDelete struct {
	rel     uint32
	oldKind byte // 'K' or 'O'
	old     []colValue
}

type msgTruncate struct {
	options byte
	rels    []uint32
}

type msgLogical struct {
	transactional bool
	lsn           pglogrepl.LSN
	prefix        string
	content       []byte
}

type msgOrigin struct {
	lsn  pglogrepl.LSN
	name string
}

// maxColumns bounds the columns of a relation or tuple (PostgreSQL allows
// 1664 in a target list, 1600 in a table).
const maxColumns = 1664

// decodeMessage decodes one pgoutput message. Slices in the result alias
// data.
func decodeMessage(data []byte) (any, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty message", ErrProtocol)
	}
	r := &msgReader{b: data[1:]}
	var m any
	switch data[0] {
	case 'B':
		m = r.begin()
	case 'C':
		m = r.commit()
	case 'R':
		m = r.relation()
	case 'Y':
		m = &msgType{oid: r.u32(), namespace: r.str(), name: r.str()}
	case 'I':
		m = r.insert()
	case 'U':
		m = r.update()
	case 'D':
		m = r.delete()
	case 'T':
		m = r.truncate()
	case 'M':
		m = r.logical()
	case 'O':
		m = &msgOrigin{lsn: pglogrepl.LSN(r.u64()), name: r.str()}
	default:
		return nil, fmt.Errorf("%w: unknown message type %q", ErrProtocol, data[0])
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: decoding %q message: %v", ErrProtocol, data[0], r.err)
	}
	return m, nil
}

// msgReader reads big-endian protocol fields; the first short read sets err
// and every later read returns zero values.
type msgReader struct {
	b   []byte
	err error
}

func (r *msgReader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || len(r.b) < n {
		r.err = fmt.Errorf("need %d bytes, have %d", n, len(r.b))
		return false
	}
	return true
}

func (r *msgReader) u8() byte {
	if !r.need(1) {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *msgReader) u16() uint16 {
	if !r.need(2) {
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *msgReader) u32() uint32 {
	if !r.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *msgReader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *msgReader) time() time.Time {
	us := int64(r.u64())
	return pgEpoch.Add(time.Duration(us) * time.Microsecond)
}

func (r *msgReader) bytes(n int) []byte {
	if !r.need(n) {
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// str reads a NUL-terminated string.
func (r *msgReader) str() string {
	if r.err != nil {
		return ""
	}
	for i, c := range r.b {
		if c == 0 {
			s := string(r.b[:i])
			r.b = r.b[i+1:]
			return s
		}
	}
	r.err = fmt.Errorf("unterminated string")
	return ""
}

func (r *msgReader) begin() *msgBegin {
	return &msgBegin{finalLSN: pglogrepl.LSN(r.u64()), commitTime: r.time(), xid: r.u32()}
}

func (r *msgReader) commit() *msgCommit {
	r.u8() // flags, unused
	return &msgCommit{commitLSN: pglogrepl.LSN(r.u64()), endLSN: pglogrepl.LSN(r.u64()), commitTime: r.time()}
}

func (r *msgReader) relation() *msgRelation {
	m := &msgRelation{id: r.u32(), namespace: r.str(), name: r.str(), replicaIdentity: r.u8()}
	n := int(r.u16())
	if n > maxColumns {
		r.err = fmt.Errorf("relation has %d columns, more than %d", n, maxColumns)
		return m
	}
	m.columns = make([]relColumn, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		c := relColumn{key: r.u8()&1 == 1, name: r.str(), typOID: r.u32(), typMod: int32(r.u32())}
		m.columns = append(m.columns, c)
	}
	return m
}

// tuple reads TupleData.
func (r *msgReader) tuple() []colValue {
	n := int(r.u16())
	if n > maxColumns {
		r.err = fmt.Errorf("tuple has %d columns, more than %d", n, maxColumns)
		return nil
	}
	cols := make([]colValue, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		c := colValue{kind: r.u8()}
		switch c.kind {
		case kindNull, kindUnchange:
		case kindText, kindBinary:
			l := r.u32()
			if l > uint32(len(r.b)) {
				r.err = fmt.Errorf("column %d: length %d beyond message end", i, l)
				return nil
			}
			c.data = r.bytes(int(l))
		default:
			if r.err == nil {
				r.err = fmt.Errorf("column %d: unknown tuple data kind %q", i, c.kind)
			}
			return nil
		}
		cols = append(cols, c)
	}
	return cols
}

func (r *msgReader) insert() *msgInsert {
	m := &msgInsert{rel: r.u32()}
	if k := r.u8(); k != 'N' && r.err == nil {
		r.err = fmt.Errorf("insert: tuple marker %q, want N", k)
		return m
	}
	m.new = r.tuple()
	return m
}

func (r *msgReader) update() *msgUpdate {
	m := &msgUpdate{rel: r.u32()}
	k := r.u8()
	if k == 'K' || k == 'O' {
		m.oldKind = k
		m.old = r.tuple()
		k = r.u8()
	}
	if k != 'N' && r.err == nil {
		r.err = fmt.Errorf("update: tuple marker %q, want N", k)
		return m
	}
	m.new = r.tuple()
	return m
}

func (r *msgReader) delete() *msgDelete {
	m := &msgDelete{rel: r.u32(), oldKind: r.u8()}
	if m.oldKind != 'K' && m.oldKind != 'O' && r.err == nil {
		r.err = fmt.Errorf("delete: tuple marker %q, want K or O", m.oldKind)
		return m
	}
	m.old = r.tuple()
	return m
}

func (r *msgReader) truncate() *msgTruncate {
	n := r.u32()
	m := &msgTruncate{options: r.u8()}
	if uint64(n)*4 > uint64(len(r.b)) {
		if r.err == nil {
			r.err = fmt.Errorf("truncate: %d relations beyond message end", n)
		}
		return m
	}
	m.rels = make([]uint32, n)
	for i := range m.rels {
		m.rels[i] = r.u32()
	}
	return m
}

func (r *msgReader) logical() *msgLogical {
	m := &msgLogical{transactional: r.u8() == 1, lsn: pglogrepl.LSN(r.u64()), prefix: r.str()}
	n := r.u32()
	if n > uint32(len(r.b)) {
		if r.err == nil {
			r.err = fmt.Errorf("message content length %d beyond message end", n)
		}
		return m
	}
	m.content = r.bytes(int(n))
	return m
}
