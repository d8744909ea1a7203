package postgres

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Headers of change records.
const (
	// SpecialHeader lists values the column's Avro type cannot hold
	// (numeric NaN and ±Infinity in a decimal column), written as null in
	// the row, one "<before|after>.<column>=<PostgreSQL text>" per line.
	SpecialHeader = "loanflow.special"
	// BeforeErrorHeader says why the before-image is null although
	// PostgreSQL sent one (a value that could not be converted).
	BeforeErrorHeader = "loanflow.before_error"
)

// itemKind is what the receiver (or the snapshot) hands the writer.
type itemKind uint8

const (
	itBegin     itemKind = iota + 1 // a transaction starts: lsn = commit LSN
	itChange                        // ev
	itCommit                        // a transaction ends: lsn, endLSN
	itHeartbeat                     // heartbeat message at lsn, event time at
	itFlush                         // keepalive: nothing is pending up to lsn
	itSnapMark                      // snapshot boundary: pos may be committed
	itSlotNonce                     // the slot's nonce message at lsn: text
	itWatermark                     // an incremental snapshot watermark at lsn: text
	itSignal                        // a loanflow.signal message at lsn: text
)

// item is one unit of the receiver → writer queue.
type item struct {
	kind   itemKind
	ev     *event
	lsn    pglogrepl.LSN
	endLSN pglogrepl.LSN
	at     time.Time
	pos    *Position
	final  bool     // last snapshot mark
	xid    uint32   // itBegin
	text   string   // itSlotNonce, itWatermark, itSignal
	tables []string // final itSnapMark: the tables the snapshot read
}

// Change operations (the envelope's op).
const (
	opCreate   = 'c'
	opUpdate   = 'u'
	opDelete   = 'd'
	opRead     = 'r'
	opTruncate = 't'
)

// event is one row change, with its raw column values (text format).
type event struct {
	op         byte
	t          *table
	old, new   []colValue
	lsn        pglogrepl.LSN // the change's own LSN (a snapshot read's: the snapshot's)
	commitLSN  pglogrepl.LSN
	xid        uint32
	commitTime time.Time
	snapshot   string // "true", "last" or "false"
	db         string
	raw        []byte // an undecodable message an operator skipped

	// Set by convert (on the receiver or snapshot goroutine, which has
	// spare CPU while the writer encodes): the converted rows, or the
	// conversion error the writer dead-letters.
	before, after []any
	specials      []string // image.column=text of values written as null
	beforeErr     error    // why before is null although old was sent
	convErr       error
	converted     bool
	processedMs   int64
	txBlock       map[string]any // the transaction block (txmeta.go), set by the writer
}

// convert turns the raw tuples into Avro-ready values.
func (ev *event) convert() error {
	if ev.converted {
		return ev.convErr
	}
	ev.converted = true
	if ev.t.err != nil {
		ev.convErr = ev.t.err // a table the reader cannot encode at all
		return ev.convErr
	}
	ev.convErr = ev.doConvert()
	return ev.convErr
}

// doConvert converts the before- and after-images independently: the
// change goes to the dead-letter topic only when its payload image (the
// after-image, or the before-image of a delete) cannot be converted; a
// before-image of an insert-or-update that cannot be converted is written
// as null with the reason in the loanflow.before_error header.
func (ev *event) doConvert() error {
	var errBefore, errAfter error
	if ev.old != nil {
		ev.before, errBefore = ev.convertRow(ev.old, "before")
	}
	if ev.new != nil {
		ev.after, errAfter = ev.convertRow(ev.new, "after")
	}
	if ev.op == opDelete {
		return errBefore
	}
	if errAfter != nil {
		return errAfter
	}
	if errBefore != nil {
		if !errors.Is(errBefore, ErrValue) && !errors.Is(errBefore, ErrUnsupportedType) {
			return errBefore
		}
		ev.before, ev.beforeErr = nil, errBefore
	}
	return nil
}

// convertRow converts one image; values its Avro type cannot hold
// (specialValue) become null and are listed in ev.specials as
// "<image>.<column>=<text>".
func (ev *event) convertRow(vals []colValue, image string) ([]any, error) {
	t := ev.t
	if len(vals) != len(t.cols) {
		return nil, fmt.Errorf("%w: %s: tuple has %d columns, relation %d", ErrProtocol, t.qualified(), len(vals), len(t.cols))
	}
	row := make([]any, len(vals))
	for i, v := range vals {
		switch v.kind {
		case kindNull:
		case kindText:
			x, err := t.cols[i].typ.conv(v.data)
			if err != nil {
				return nil, fmt.Errorf("%s column %s.%s: %w", image, t.qualified(), t.cols[i].name, err)
			}
			if sv, ok := x.(specialValue); ok {
				if isKey(t, i) {
					return nil, fmt.Errorf("%w: key column %s.%s holds %s, which its Avro type cannot hold", ErrValue, t.qualified(), t.cols[i].name, sv)
				}
				ev.specials = append(ev.specials, image+"."+t.cols[i].name+"="+string(sv))
				x = nil
			}
			row[i] = x
		case kindUnchange:
			return nil, fmt.Errorf("%w: %s column %s.%s", ErrUnchangedToast, image, t.qualified(), t.cols[i].name)
		default:
			return nil, fmt.Errorf("%w: column %s.%s: binary tuple data not requested", ErrProtocol, t.qualified(), t.cols[i].name)
		}
	}
	return row, nil
}

// headers are the headers of a change's value record: special values and
// a before-image that could not be converted.
func (ev *event) headers() []kgo.RecordHeader {
	var h []kgo.RecordHeader
	if len(ev.specials) > 0 {
		h = append(h, kgo.RecordHeader{Key: SpecialHeader, Value: []byte(strings.Join(ev.specials, "\n"))})
	}
	if ev.beforeErr != nil {
		h = append(h, kgo.RecordHeader{Key: BeforeErrorHeader, Value: []byte(ev.beforeErr.Error())})
	}
	return h
}

// source fills s, the envelope's source block (reused across events).
func (ev *event) source(t *table, s map[string]any) map[string]any {
	s["version"], s["connector"], s["name"] = Version, "postgresql", t.route.topicPrefix()
	s["ts_ms"], s["snapshot"], s["db"] = ev.commitTime.UnixMilli(), ev.snapshot, ev.db
	s["schema"], s["table"], s["sequence"], s["txId"], s["lsn"], s["xmin"] = t.schema, t.name, nil, nil, nil, nil
	// Snapshot reads carry the snapshot's LSN (the slot's consistent point,
	// or an incremental chunk's high watermark) and xmin, as Debezium fills
	// them.
	if ev.op != opRead || ev.xid != 0 {
		s["txId"] = int64(ev.xid)
	}
	if ev.lsn != 0 {
		s["lsn"] = int64(ev.lsn)
		s["sequence"] = `["` + strconv.FormatUint(uint64(ev.commitLSN), 10) + `","` + strconv.FormatUint(uint64(ev.lsn), 10) + `"]`
	}
	return s
}

// keyChanged reports whether an update moved the row to another primary
// key (the old tuple then carries the old key).
func (ev *event) keyChanged() bool {
	if ev.op != opUpdate || ev.old == nil {
		return false
	}
	for _, i := range ev.t.keyIdx {
		if string(ev.old[i].data) != string(ev.new[i].data) || ev.old[i].kind != ev.new[i].kind {
			return true
		}
	}
	return false
}
