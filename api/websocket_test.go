package api

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// dialWS connects a real WebSocket client to the decisions endpoint.
func dialWS(t *testing.T, e *env, tok, query string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := http.Header{}
	if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	}
	return websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.url, "http")+"/v1/decisions/ws"+query, &websocket.DialOptions{HTTPHeader: h})
}

func readWS(t *testing.T, c *websocket.Conn) WSMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var m WSMessage
	if err := wsjson.Read(ctx, c, &m); err != nil {
		t.Fatalf("reading a decision: %v", err)
	}
	return m
}

// TestDecisionsWebSocket: a point-of-sale client (coder/websocket) gets its
// lender's decisions, only the outcomes it asked for, never another
// lender's; without a token it is refused (401); reconnecting with its last
// id it gets what it missed.
func TestDecisionsWebSocket(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-w")
	e.lender("bank-x")
	dec, _, _ := e.avro()

	if _, resp, err := dialWS(t, e, "", ""); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("dial without a token: %v %v, want 401", err, resp)
	}
	if _, resp, err := dialWS(t, e, tok, "?decision=MAYBE"); err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("dial with a bad filter: %v %v, want 400", err, resp)
	}

	all, _, err := dialWS(t, e, tok, "")
	if err != nil {
		t.Fatal(err)
	}
	defer all.CloseNow()
	declined, _, err := dialWS(t, e, tok, "?decision=DECLINED")
	if err != nil {
		t.Fatal(err)
	}
	defer declined.CloseNow()
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-w-1", "bank-w", "APPROVED", 700),
		decisionRecord(t, dec, "app-x-1", "bank-x", "DECLINED", 500),
		decisionRecord(t, dec, "app-w-2", "bank-w", "DECLINED", 510))
	got := map[string]WSMessage{}
	for len(got) < 2 {
		m := readWS(t, all)
		if m.Data.LenderID != "bank-w" || m.ID == "" || m.Event != "decision" {
			t.Fatalf("message %+v: want bank-w's decisions with an id", m)
		}
		got[m.Data.ApplicationID] = m
	}
	if _, ok := got["app-w-1"]; !ok {
		t.Fatalf("got %v, want app-w-1 and app-w-2", got)
	}
	if m := readWS(t, declined); m.Data.ApplicationID != "app-w-2" {
		t.Fatalf("the DECLINED-only client got %+v, want app-w-2", m)
	}

	// Resume: away after app-w-2, back with its id.
	all.Close(websocket.StatusNormalClosure, "")
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-w-3", "bank-w", "REFER", 640))
	if r := e.do("GET", "/v1/loan-applications/app-w-3/decision?timeout=20s", tok, nil); r.status != 200 {
		t.Fatalf("long-poll app-w-3: %d %s", r.status, r.body)
	}
	back, _, err := dialWS(t, e, tok, "?last_event_id="+lastID(got))
	if err != nil {
		t.Fatal(err)
	}
	defer back.CloseNow()
	if m := readWS(t, back); m.Data.ApplicationID != "app-w-3" {
		t.Fatalf("resumed with %+v, want app-w-3 (missed while away) first", m)
	}
}

// lastID is the id of the later of the decisions received (the one whose
// position is past the other's on every partition).
func lastID(got map[string]WSMessage) string {
	a, _ := parsePosition(got["app-w-1"].ID)
	b, _ := parsePosition(got["app-w-2"].ID)
	for p, off := range a {
		if b[p] < off {
			return got["app-w-1"].ID
		}
	}
	return got["app-w-2"].ID
}
