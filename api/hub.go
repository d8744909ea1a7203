package api

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// event is one server-sent event for a lender.
type event struct {
	name string // decision | metric
	data any
	id   string // decisions: the hub's position in loan_decisions after it (see position)
}

type subscriber struct {
	lender string
	ch     chan event
	done   chan struct{} // closed when dropped for being too slow
	once   sync.Once
}

func (s *subscriber) drop() { s.once.Do(func() { close(s.done) }) }

// hub consumes loan_decisions and portfolio_metrics and fans them out: a
// bounded map of recent decisions for long-polls, waiters per application,
// SSE subscribers per lender and the latest metrics per lender. The hub
// goroutine (run) is owned by the Server.
type hub struct {
	maxDecisions int
	maxLenders   int
	history      int
	mu           struct {
		sync.Mutex
		decisions map[string]Decision
		order     []string // FIFO of decision keys for eviction
		waiters   map[string][]chan Decision
		subs      map[string]map[*subscriber]struct{}
		metrics   map[string][]Metric // newest last, at most history
		consumed  int64
		lastEvent time.Time
		pos       position // next offset per partition of loan_decisions
	}
}

func newHub(maxDecisions, maxLenders int) *hub {
	h := &hub{maxDecisions: maxDecisions, maxLenders: maxLenders, history: 60}
	h.mu.decisions = map[string]Decision{}
	h.mu.waiters = map[string][]chan Decision{}
	h.mu.subs = map[string]map[*subscriber]struct{}{}
	h.mu.metrics = map[string][]Metric{}
	h.mu.pos = position{}
	return h
}

// AppKey is an application's key: application ids are chosen by each
// lender's terminals and are unique per lender only, so everything keyed
// by application (the loan_applications and loan_decisions record keys,
// the decisions job's dedupe, the hub) is keyed by lender and id. "/" is
// not an id character, so the key is unambiguous.
func AppKey(lender, applicationID string) string { return lender + "/" + applicationID }

// skipDecision moves the position past a record that is not a decision.
func (h *hub) skipDecision(part int32, offset int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.pos[part] = offset + 1
}

func (h *hub) addDecision(d Decision, part int32, offset int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.pos[part] = offset + 1
	h.mu.consumed++
	h.mu.lastEvent = time.Now()
	key := AppKey(d.LenderID, d.ApplicationID)
	if _, ok := h.mu.decisions[key]; !ok {
		h.mu.order = append(h.mu.order, key)
		if len(h.mu.order) > h.maxDecisions {
			delete(h.mu.decisions, h.mu.order[0])
			h.mu.order = h.mu.order[1:]
		}
	}
	h.mu.decisions[key] = d
	for _, w := range h.mu.waiters[key] {
		w <- d // buffered 1, registered once
	}
	delete(h.mu.waiters, key)
	h.publishLocked(d.LenderID, event{name: "decision", data: d, id: h.mu.pos.String()})
}

func (h *hub) addMetric(m Metric) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.consumed++
	h.mu.lastEvent = time.Now()
	hist, ok := h.mu.metrics[m.LenderID]
	if !ok && len(h.mu.metrics) >= h.maxLenders {
		return
	}
	replaced := false
	for i := range hist {
		if hist[i].WindowStart.Equal(m.WindowStart) {
			hist[i], replaced = m, true
		}
	}
	if !replaced {
		hist = append(hist, m)
		for i := len(hist) - 1; i > 0 && hist[i].WindowStart.Before(hist[i-1].WindowStart); i-- {
			hist[i], hist[i-1] = hist[i-1], hist[i]
		}
		if len(hist) > h.history {
			hist = hist[len(hist)-h.history:]
		}
	}
	h.mu.metrics[m.LenderID] = hist
	h.publishLocked(m.LenderID, event{name: "metric", data: m})
}

func (h *hub) publishLocked(lender string, ev event) {
	for s := range h.mu.subs[lender] {
		select {
		case s.ch <- ev:
		default:
			s.drop() // too slow: the client reconnects and reloads
			delete(h.mu.subs[lender], s)
		}
	}
}

// decision returns a known decision (appID is an AppKey), or a channel
// that receives it.
func (h *hub) decision(appID string) (Decision, bool, chan Decision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d, ok := h.mu.decisions[appID]; ok {
		return d, true, nil
	}
	ch := make(chan Decision, 1)
	h.mu.waiters[appID] = append(h.mu.waiters[appID], ch)
	return Decision{}, false, ch
}

func (h *hub) cancelWait(appID string, ch chan Decision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ws := h.mu.waiters[appID]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(h.mu.waiters, appID)
	} else {
		h.mu.waiters[appID] = ws
	}
}

func (h *hub) subscribe(lender string, buf int) *subscriber {
	s, _ := h.subscribeAt(lender, buf)
	return s
}

// subscribeAt subscribes and returns the position the subscription starts
// after: every decision past it reaches the subscriber.
func (h *hub) subscribeAt(lender string, buf int) (*subscriber, position) {
	s := &subscriber{lender: lender, ch: make(chan event, buf), done: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	at := maps.Clone(h.mu.pos)
	if h.mu.subs[lender] == nil {
		h.mu.subs[lender] = map[*subscriber]struct{}{}
	}
	h.mu.subs[lender][s] = struct{}{}
	return s, at
}

func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.mu.subs[s.lender], s)
	if len(h.mu.subs[s.lender]) == 0 {
		delete(h.mu.subs, s.lender)
	}
}

// recent returns the lender's newest decisions (at most n, newest first).
func (h *hub) recent(lender string, n int) []Decision {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Decision
	for i := len(h.mu.order) - 1; i >= 0 && len(out) < n; i-- {
		if d := h.mu.decisions[h.mu.order[i]]; d.LenderID == lender {
			out = append(out, d)
		}
	}
	return out
}

func (h *hub) metricsOf(lender string) []Metric {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Metric(nil), h.mu.metrics[lender]...)
}

func (h *hub) stats() (int64, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.consumed, h.mu.lastEvent
}

// run polls the decision and metric topics until ctx ends. Undecodable
// records are counted and skipped (the producing job owns its DLQ).
func (s *Server) runHub(ctx context.Context) {
	for {
		fs := s.consumer.PollRecords(ctx, 1000)
		if ctx.Err() != nil {
			return
		}
		fs.EachError(func(t string, p int32, err error) {
			s.log.Warn("consuming", "topic", t, "partition", p, "err", err)
		})
		fs.EachRecord(func(r *kgo.Record) { s.dispatch(r) })
	}
}

func (s *Server) dispatch(r *kgo.Record) {
	switch r.Topic {
	case s.cfg.DecisionsTopic:
		d, err := s.codecs.DecodeDecision(r.Value)
		if err != nil {
			s.badRecords.Inc()
			s.log.Warn("undecodable decision", "partition", r.Partition, "offset", r.Offset, "err", err)
			s.hub.skipDecision(r.Partition, r.Offset)
			return
		}
		s.hub.addDecision(d, r.Partition, r.Offset)
	case s.cfg.MetricsTopic:
		m, err := s.codecs.DecodeMetric(r.Value)
		if err != nil {
			s.badRecords.Inc()
			s.log.Warn("undecodable metric", "partition", r.Partition, "offset", r.Offset, "err", err)
			return
		}
		s.hub.addMetric(m)
	}
}
