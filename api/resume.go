package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// position is a place in loan_decisions: the next offset of each
// partition. It is the SSE event id of a decision (the hub's position right
// after it), so a client that reconnects with Last-Event-ID resumes where
// it left off, also on another API instance or after a restart.
type position map[int32]int64

// String encodes p as "partition:offset,..." by partition.
func (p position) String() string {
	parts := make([]int32, 0, len(p))
	for k := range p {
		parts = append(parts, k)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	var b strings.Builder
	for i, k := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d:%d", k, p[k])
	}
	return b.String()
}

// maxPositionParts bounds a Last-Event-ID's partitions.
const maxPositionParts = 1024

var errBadPosition = errors.New("api: Last-Event-ID is not a decision stream position")

// parsePosition decodes an event id written by position.String.
func parsePosition(s string) (position, error) {
	p := position{}
	if s == "" || len(s) > 32*maxPositionParts {
		return nil, errBadPosition
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, ":")
		part, err1 := strconv.ParseInt(k, 10, 32)
		off, err2 := strconv.ParseInt(v, 10, 64)
		if !ok || err1 != nil || err2 != nil || part < 0 || off < 0 {
			return nil, errBadPosition
		}
		p[int32(part)] = off
	}
	return p, nil
}

// Replay bounds: a resume reads at most this many records of
// loan_decisions, for at most this long; past them the client gets what
// was replayed and a comment saying the rest was skipped.
const (
	maxReplayRecords = 100_000
	maxReplayTime    = 15 * time.Second
)

// replay reads loan_decisions from `from` up to `to` (exclusive, per
// partition) and calls emit with each decision of lender and the position
// after it. A partition missing from `from` (the client had seen nothing of
// it) is replayed from its start, as the hub reads it. It reports whether
// the whole range was read.
func (s *Server) replay(ctx context.Context, lender string, from, to position, emit func(Decision, string)) (bool, error) {
	offsets := map[int32]kgo.Offset{}
	cur := position{}
	for p, off := range to {
		cur[p] = off
		f, ok := from[p]
		switch {
		case !ok: // the client had seen nothing of p: from its start, as the hub reads it
			offsets[p] = kgo.NewOffset().AtStart()
			cur[p] = -1
		case f < off:
			offsets[p] = kgo.NewOffset().At(f)
			cur[p] = f
		}
	}
	if len(offsets) == 0 {
		return true, nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.cfg.KafkaBrokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{s.cfg.DecisionsTopic: offsets}))
	if err != nil {
		return false, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, maxReplayTime)
	defer cancel()
	read := 0
	done := func() bool {
		for p, end := range to {
			if cur[p] < end {
				return false
			}
		}
		return true
	}
	for !done() {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return false, nil
		}
		for it := fs.RecordIter(); !it.Done(); {
			r := it.Next()
			if r.Offset >= to[r.Partition] {
				continue
			}
			cur[r.Partition] = r.Offset + 1
			read++
			if d, err := s.codecs.DecodeDecision(r.Value); err == nil && d.LenderID == lender {
				emit(d, cur.String())
			}
		}
		if read >= maxReplayRecords {
			return false, nil
		}
	}
	return true, nil
}

// lastEventID is the position a reconnecting client asks to resume after:
// the Last-Event-ID header (EventSource sends it), or ?last_event_id= (for
// clients that cannot set headers).
func lastEventID(r *http.Request) string {
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		return id
	}
	return r.URL.Query().Get("last_event_id")
}
