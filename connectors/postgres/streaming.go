package postgres

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/jackc/pglogrepl"
)

// Streaming of in-progress transactions (pgoutput protocol version 2,
// PostgreSQL 14+). A transaction whose decoded changes exceed the server's
// logical_decoding_work_mem is sent while it runs, in blocks between
// Stream Start and Stream Stop that carry its xid (blocks of several
// transactions interleave), and ends with Stream Commit or Stream Abort; a
// Stream Abort naming a subtransaction drops that subtransaction (a
// rolled-back savepoint). The receiver keeps each streamed transaction's
// messages by xid and, at its Stream Commit, replays them as an ordinary
// transaction (Begin, changes, Commit with the commit LSN): the writer,
// the positions and the resume by change count are those of any other
// transaction, and nothing of an uncommitted transaction reaches Kafka. A
// restarted session receives the whole transaction again (the slot's
// restart_lsn precedes it), in the same order.

// StreamingMode selects pgoutput protocol version 2 with streaming.
type StreamingMode string

// Streaming modes.
const (
	StreamingAuto StreamingMode = "auto"
	StreamingOn   StreamingMode = "on"
	StreamingOff  StreamingMode = "off"
)

// streamingFor reports whether a session on a server of major version
// major streams in-progress transactions.
func streamingFor(mode StreamingMode, major int) (bool, error) {
	switch mode {
	case StreamingOff:
		return false, nil
	case StreamingOn:
		if major < 14 {
			return false, fmt.Errorf("%w: streaming: on needs PostgreSQL 14 or later (pgoutput protocol version 2); the server is %d: set streaming: auto or off", ErrConfig, major)
		}
		return true, nil
	}
	return major >= 14, nil
}

// streamedMsg is one buffered message of a streamed transaction: the
// message type followed by its body without the xid field.
type streamedMsg struct {
	lsn    pglogrepl.LSN
	subxid uint32
	data   []byte
}

// streamBuf holds a streamed transaction's messages until its end: in
// memory, or (once spilled) in an unlinked temporary file.
type streamBuf struct {
	xid      uint32
	mem      []streamedMsg
	memBytes int
	file     *os.File
	w        *bufio.Writer
	aborted  map[uint32]bool // rolled-back subtransactions
	msgs     int
}

// streams is the receiver's state of streamed transactions.
type streams struct {
	on       bool // protocol version 2 with streaming
	inBlock  bool
	blockXid uint32
	bufs     map[uint32]*streamBuf
	memBytes int // in memory over all buffers
	maxBytes int
	dir      string
	spills   int // buffers spilled (tests, logs)
}

func (s *streams) close() {
	for _, b := range s.bufs {
		b.close()
	}
	clear(s.bufs)
	s.memBytes = 0
}

func (b *streamBuf) close() {
	if b.file != nil {
		_ = b.file.Close()
		b.file, b.w = nil, nil
	}
	b.mem = nil
}

// streamPrefixed reports the message types that carry an xid inside a
// stream block.
func streamPrefixed(t byte) bool {
	switch t {
	case 'R', 'Y', 'I', 'U', 'D', 'T', 'M':
		return true
	}
	return false
}

// streamMessage handles the stream control messages and the messages
// inside a stream block; it reports whether it took the message.
func (r *receiver) streamMessage(ctx context.Context, xld pglogrepl.XLogData, buf []byte) (bool, error) {
	s := &r.streams
	if !s.on || len(buf) == 0 {
		return false, nil
	}
	rd := &msgReader{b: buf[1:]}
	switch buf[0] {
	case 'S': // Stream Start: xid, first segment
		xid, first := rd.u32(), rd.u8()
		if rd.err != nil {
			return true, fmt.Errorf("%w: Stream Start at %s: %v", ErrProtocol, xld.WALStart, rd.err)
		}
		if s.inBlock {
			return true, fmt.Errorf("%w: Stream Start of %d at %s inside the block of %d", ErrProtocol, xid, xld.WALStart, s.blockXid)
		}
		if s.bufs[xid] == nil {
			if first != 1 {
				return true, fmt.Errorf("%w: Stream Start of %d at %s continues a transaction whose first block this session did not receive", ErrProtocol, xid, xld.WALStart)
			}
			s.bufs[xid] = &streamBuf{xid: xid}
			r.m.streamedTxns.Inc()
		}
		s.inBlock, s.blockXid = true, xid
		return true, nil
	case 'E': // Stream Stop
		if !s.inBlock {
			return true, fmt.Errorf("%w: Stream Stop at %s outside a stream block", ErrProtocol, xld.WALStart)
		}
		s.inBlock = false
		return true, nil
	case 'c': // Stream Commit: xid, flags, commit LSN, end LSN, commit time
		xid := rd.u32()
		rd.u8()
		c := msgCommit{commitLSN: pglogrepl.LSN(rd.u64()), endLSN: pglogrepl.LSN(rd.u64()), commitTime: rd.time()}
		if rd.err != nil {
			return true, fmt.Errorf("%w: Stream Commit at %s: %v", ErrProtocol, xld.WALStart, rd.err)
		}
		b := s.bufs[xid]
		if b == nil {
			return true, fmt.Errorf("%w: Stream Commit of %d at %s without its stream", ErrProtocol, xid, xld.WALStart)
		}
		delete(s.bufs, xid)
		s.memBytes -= b.memBytes
		defer b.close()
		return true, r.replay(ctx, b, c)
	case 'A': // Stream Abort: xid, subxid
		xid, subxid := rd.u32(), rd.u32()
		if rd.err != nil {
			return true, fmt.Errorf("%w: Stream Abort at %s: %v", ErrProtocol, xld.WALStart, rd.err)
		}
		b := s.bufs[xid]
		if b == nil {
			return true, nil // aborted before anything of it was streamed to this session
		}
		if r.cfg.ignoreStreamAbort {
			return true, nil
		}
		if subxid == xid {
			delete(s.bufs, xid)
			s.memBytes -= b.memBytes
			b.close()
			r.m.streamedAborts.Inc()
			return true, nil
		}
		if b.aborted == nil {
			b.aborted = map[uint32]bool{}
		}
		b.aborted[subxid] = true
		kept := b.mem[:0]
		for _, m := range b.mem {
			if m.subxid == subxid && dropOnAbort(m.data[0]) {
				b.memBytes -= len(m.data)
				s.memBytes -= len(m.data)
				continue
			}
			kept = append(kept, m)
		}
		clear(b.mem[len(kept):])
		b.mem = kept
		return true, nil
	}
	if !s.inBlock || !streamPrefixed(buf[0]) {
		return false, nil
	}
	subxid := rd.u32()
	if rd.err != nil {
		return true, fmt.Errorf("%w: streamed %q message at %s: %v", ErrProtocol, buf[0], xld.WALStart, rd.err)
	}
	data := make([]byte, 0, len(rd.b)+1)
	data = append(append(data, buf[0]), rd.b...)
	return true, r.buffer(s.bufs[s.blockXid], streamedMsg{lsn: xld.WALStart, subxid: subxid, data: data})
}

// dropOnAbort: a rolled-back subtransaction's changes and transactional
// messages are dropped; its Relation and Type messages describe tables
// the rest of the transaction may use (pgoutput does not send them again).
func dropOnAbort(t byte) bool { return t != 'R' && t != 'Y' }

// buffer appends m to b, spilling the largest in-memory buffer to a file
// while the memory bound is exceeded.
func (r *receiver) buffer(b *streamBuf, m streamedMsg) error {
	s := &r.streams
	b.msgs++
	if b.file != nil {
		return b.write(m)
	}
	b.mem = append(b.mem, m)
	b.memBytes += len(m.data)
	s.memBytes += len(m.data)
	for s.memBytes > s.maxBytes {
		var big *streamBuf
		for _, o := range s.bufs {
			if o.file == nil && (big == nil || o.memBytes > big.memBytes) {
				big = o
			}
		}
		if big == nil || big.memBytes == 0 {
			break
		}
		if err := r.spill(big); err != nil {
			return err
		}
	}
	return nil
}

// spill moves b's messages to an unlinked temporary file; later messages
// are appended there.
func (r *receiver) spill(b *streamBuf) error {
	s := &r.streams
	f, err := os.CreateTemp(s.dir, "loanflow-cdc-stream-*")
	if err != nil {
		return fmt.Errorf("spilling streamed transaction %d: %w (set stream_spill_dir, or a larger stream_buffer_bytes)", b.xid, err)
	}
	_ = os.Remove(f.Name()) // open: the data lives until the file is closed, never after a crash
	b.file, b.w = f, bufio.NewWriterSize(f, 1<<16)
	for _, m := range b.mem {
		if err := b.write(m); err != nil {
			return err
		}
	}
	s.memBytes -= b.memBytes
	b.mem, b.memBytes = nil, 0
	s.spills++
	r.m.streamSpills.Inc()
	return nil
}

func (b *streamBuf) write(m streamedMsg) error {
	var h [16]byte
	binary.BigEndian.PutUint64(h[0:], uint64(m.lsn))
	binary.BigEndian.PutUint32(h[8:], m.subxid)
	binary.BigEndian.PutUint32(h[12:], uint32(len(m.data)))
	if _, err := b.w.Write(h[:]); err != nil {
		return fmt.Errorf("spilling streamed transaction %d: %w", b.xid, err)
	}
	if _, err := b.w.Write(m.data); err != nil {
		return fmt.Errorf("spilling streamed transaction %d: %w", b.xid, err)
	}
	return nil
}

// each calls fn with b's messages in order, without those of rolled-back
// subtransactions.
func (b *streamBuf) each(fn func(streamedMsg) error) error {
	keep := func(m streamedMsg) bool { return !b.aborted[m.subxid] || !dropOnAbort(m.data[0]) }
	if b.file != nil {
		if err := b.w.Flush(); err != nil {
			return fmt.Errorf("reading back streamed transaction %d: %w", b.xid, err)
		}
		if _, err := b.file.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("reading back streamed transaction %d: %w", b.xid, err)
		}
		rd := bufio.NewReaderSize(b.file, 1<<16)
		var h [16]byte
		for {
			if _, err := io.ReadFull(rd, h[:]); err == io.EOF {
				break
			} else if err != nil {
				return fmt.Errorf("reading back streamed transaction %d: %w", b.xid, err)
			}
			m := streamedMsg{lsn: pglogrepl.LSN(binary.BigEndian.Uint64(h[0:])), subxid: binary.BigEndian.Uint32(h[8:])}
			m.data = make([]byte, binary.BigEndian.Uint32(h[12:]))
			if _, err := io.ReadFull(rd, m.data); err != nil {
				return fmt.Errorf("reading back streamed transaction %d: %w", b.xid, err)
			}
			if keep(m) {
				if err := fn(m); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, m := range b.mem {
		if keep(m) {
			if err := fn(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// replay hands a committed streamed transaction to the writer as an
// ordinary one.
func (r *receiver) replay(ctx context.Context, b *streamBuf, c msgCommit) error {
	if r.inTxn {
		return fmt.Errorf("%w: Stream Commit of %d at %s inside a transaction", ErrProtocol, b.xid, c.commitLSN)
	}
	begin := msgBegin{finalLSN: c.commitLSN, commitTime: c.commitTime, xid: b.xid}
	r.inTxn, r.begin = true, begin
	r.add(item{kind: itBegin, lsn: begin.finalLSN, at: begin.commitTime, xid: begin.xid})
	err := b.each(func(m streamedMsg) error {
		return r.decoded(ctx, pglogrepl.XLogData{WALStart: m.lsn}, m.data)
	})
	if err != nil {
		return err
	}
	r.inTxn = false
	r.add(item{kind: itCommit, lsn: c.commitLSN, endLSN: c.endLSN, at: c.commitTime})
	return r.send(ctx)
}
