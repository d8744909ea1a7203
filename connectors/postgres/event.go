package postgres

import (
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
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
)

// item is one unit of the receiver → writer queue.
type item struct {
	kind   itemKind
	ev     *event
	lsn    pglogrepl.LSN
	endLSN pglogrepl.LSN
	at     time.Time
	pos    *Position
	final  bool // last snapshot mark
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
	lsn        pglogrepl.LSN // the change's own LSN (nil for snapshot reads)
	commitLSN  pglogrepl.LSN
	xid        uint32
	commitTime time.Time
	snapshot   string // "true", "last" or "false"
	db         string

	// Set by convert (on the receiver or snapshot goroutine, which has
	// spare CPU while the writer encodes): the converted rows, or the
	// conversion error the writer dead-letters.
	before, after []any
	convErr       error
	converted     bool
	processedMs   int64
}

// convert turns the raw tuples into Avro-ready values.
func (ev *event) convert() error {
	if ev.converted {
		return ev.convErr
	}
	ev.converted = true
	ev.convErr = ev.doConvert()
	return ev.convErr
}

func (ev *event) doConvert() error {
	var err error
	if ev.old != nil {
		if ev.before, err = convertRow(ev.t, ev.old); err != nil {
			return err
		}
	}
	if ev.new != nil {
		if ev.after, err = convertRow(ev.t, ev.new); err != nil {
			return err
		}
	}
	return nil
}

func convertRow(t *table, vals []colValue) ([]any, error) {
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
				return nil, fmt.Errorf("column %s.%s: %w", t.qualified(), t.cols[i].name, err)
			}
			row[i] = x
		case kindUnchange:
			return nil, fmt.Errorf("%w: column %s.%s", ErrUnchangedToast, t.qualified(), t.cols[i].name)
		default:
			return nil, fmt.Errorf("%w: column %s.%s: binary tuple data not requested", ErrProtocol, t.qualified(), t.cols[i].name)
		}
	}
	return row, nil
}

// source fills s, the envelope's source block (reused across events).
func (ev *event) source(t *table, s map[string]any) map[string]any {
	s["version"], s["connector"], s["name"] = Version, "postgresql", t.route.topicPrefix()
	s["ts_ms"], s["snapshot"], s["db"] = ev.commitTime.UnixMilli(), ev.snapshot, ev.db
	s["schema"], s["table"], s["sequence"], s["txId"], s["lsn"], s["xmin"] = t.schema, t.name, nil, nil, nil, nil
	if ev.op != opRead {
		s["txId"] = int64(ev.xid)
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
