package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/loanflow/loanflow/api/audit"
)

// WSMessage is one message of GET /v1/decisions/ws: a decision with its
// position in loan_decisions (give it back as ?last_event_id= to resume).
type WSMessage struct {
	ID    string   `json:"id"`
	Event string   `json:"event"` // "decision"
	Data  Decision `json:"data"`
}

// wsWriteTimeout bounds one message write to a terminal.
const wsWriteTimeout = 10 * time.Second

// decisionsWS serves a lender's decisions over WebSocket for point-of-sale
// terminals: the same authentication, lender scoping, stream limit and
// resume as the SSE stream, plus ?decision=APPROVED,DECLINED,REFER to
// receive only some outcomes. The server only writes; a terminal that
// falls too far behind is closed with 1013 (try again later) and resumes
// with its last id.
func (s *Server) decisionsWS(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	if p.Lender == "" {
		writeProblem(w, r, http.StatusForbidden, "no-lender", "decision streams are per lender")
		return
	}
	var only map[string]bool
	if q := r.URL.Query().Get("decision"); q != "" {
		only = map[string]bool{}
		for _, d := range strings.Split(strings.ToUpper(q), ",") {
			if d != "APPROVED" && d != "DECLINED" && d != "REFER" {
				writeProblem(w, r, http.StatusBadRequest, "bad-filter", "decision must be a comma-separated list of APPROVED, DECLINED, REFER")
				return
			}
			only[d] = true
		}
	}
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "decision.stream", "decisions/lender="+p.Lender, "", audit.ResultOK)) {
		return
	}
	if !s.streams.TryAcquire(1) {
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, http.StatusServiceUnavailable, "too-many-streams", "too many open event streams; retry later")
		return
	}
	defer s.streams.Release(1)
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the client
	}
	defer c.CloseNow()
	sub, at := s.hub.subscribeAt(p.Lender, s.cfg.SSEBuffer)
	defer s.hub.unsubscribe(sub)
	ctx := c.CloseRead(r.Context())
	send := func(d Decision, id string) error {
		if only != nil && !only[d.Decision] {
			return nil
		}
		wctx, cancel := context.WithTimeout(ctx, wsWriteTimeout)
		defer cancel()
		return wsjson.Write(wctx, c, WSMessage{ID: id, Event: "decision", Data: d})
	}
	if id := lastEventID(r); id != "" {
		if err := s.wsResume(ctx, c, p.Lender, id, at, send); err != nil {
			return
		}
	}
	for {
		select {
		case ev := <-sub.ch:
			if d, ok := ev.data.(Decision); ok && ev.name == "decision" {
				if err := send(d, ev.id); err != nil {
					return
				}
			}
		case <-sub.done:
			c.Close(websocket.StatusTryAgainLater, "too far behind: reconnect with ?last_event_id=")
			return
		case <-s.closing:
			c.Close(websocket.StatusGoingAway, "server shutting down: reconnect with ?last_event_id=")
			return
		case <-ctx.Done():
			return
		}
	}
}

// wsResume replays what a reconnecting terminal missed.
func (s *Server) wsResume(ctx context.Context, c *websocket.Conn, lender, id string, at position, send func(Decision, string) error) error {
	from, err := parsePosition(id)
	if err != nil {
		c.Close(websocket.StatusPolicyViolation, "last_event_id is not a decision stream position")
		return err
	}
	var serr error
	complete, err := s.replay(ctx, lender, from, at, func(d Decision, id string) {
		if serr == nil {
			serr = send(d, id)
		}
	})
	if serr != nil {
		return serr
	}
	if err != nil || !complete {
		c.Close(websocket.StatusTryAgainLater, "replay incomplete: reload the full state")
		return errors.Join(err, errors.New("api: replay incomplete"))
	}
	return nil
}
