package api

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"
)

// idEvent is a server-sent event with its id.
type idEvent struct{ id, name, data string }

// openResumable opens the decision stream, optionally resuming after id.
func openResumable(t *testing.T, e *env, tok, lastID string) (<-chan idEvent, func()) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.url+"/v1/decisions/stream", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %v %v", err, resp)
	}
	ch := make(chan idEvent, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var ev idEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.name = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			case line == "" && ev.name != "":
				ch <- ev
				ev = idEvent{}
			}
		}
	}()
	return ch, func() { resp.Body.Close() }
}

func nextEvent(t *testing.T, ch <-chan idEvent) idEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("stream closed")
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no server-sent event")
	}
	return idEvent{}
}

// TestSSEResumesFromLastEventID: decisions carry an id; a client that
// reconnects with its last id gets the lender's decisions it missed while
// away (replayed from loan_decisions), in order, and nothing twice; one
// that reconnects without an id does not (the negative control).
func TestSSEResumesFromLastEventID(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-r")
	e.lender("bank-s")
	dec, _, _ := e.avro()
	ch, closeStream := openResumable(t, e, tok, "")
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-r-1", "bank-r", "APPROVED", 700))
	first := nextEvent(t, ch)
	if first.id == "" || !strings.Contains(first.data, "app-r-1") {
		t.Fatalf("first event %+v: want app-r-1 with an id", first)
	}
	closeStream()

	// Away: two decisions of bank-r, one of another lender.
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-r-2", "bank-r", "DECLINED", 500),
		decisionRecord(t, dec, "app-s-1", "bank-s", "APPROVED", 800),
		decisionRecord(t, dec, "app-r-3", "bank-r", "APPROVED", 760))
	// Wait until the API consumed them: the long-poll of the last answers.
	if r := e.do("GET", "/v1/loan-applications/app-r-3/decision?timeout=20s", tok, nil); r.status != 200 {
		t.Fatalf("long-poll app-r-3: %d %s", r.status, r.body)
	}

	resumed, closeResumed := openResumable(t, e, tok, first.id)
	defer closeResumed()
	var got []string
	for len(got) < 2 {
		ev := nextEvent(t, resumed)
		if ev.id == "" {
			t.Fatalf("replayed event without id: %+v", ev)
		}
		got = append(got, ev.data)
	}
	if !strings.Contains(got[0], "app-r-2") || !strings.Contains(got[1], "app-r-3") {
		t.Fatalf("replayed %v, want app-r-2 then app-r-3", got)
	}
	// Nothing more is replayed (no app-r-1 again, no other lender's): the
	// next event is a live one.
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-r-4", "bank-r", "APPROVED", 710))
	if ev := nextEvent(t, resumed); !strings.Contains(ev.data, "app-r-4") {
		t.Fatalf("after the replay: %+v, want the live app-r-4", ev)
	}

	// Negative control: without Last-Event-ID nothing is replayed.
	fresh, closeFresh := openResumable(t, e, tok, "")
	defer closeFresh()
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-r-5", "bank-r", "APPROVED", 710))
	if ev := nextEvent(t, fresh); !strings.Contains(ev.data, "app-r-5") {
		t.Fatalf("a fresh stream got %+v, want only the live app-r-5", ev)
	}

	// A malformed id is said to be one, and the stream still works.
	if _, err := parsePosition("x:1"); err == nil {
		t.Fatal("parsePosition accepted x:1")
	}
}

// TestLongPollUnknownApplication: a long-poll for an id the lender never
// submitted says so (404 unknown-application) instead of 202 PENDING
// forever; a submitted, undecided one is still PENDING (the control).
func TestLongPollUnknownApplication(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-u")
	other := e.lender("bank-v")
	body := map[string]any{"application_id": "app-u-1", "pos_terminal_id": "pos-1", "amount": "100.00", "currency": "USD",
		"applicant": map[string]string{"name": "U Applicant", "ssn": "123-45-6789"}}
	if r := e.do("POST", "/v1/loan-applications", tok, body); r.status != 202 {
		t.Fatalf("submit: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/v1/loan-applications/app-u-1/decision?timeout=100ms", tok, nil); r.status != 202 || !strings.Contains(string(r.body), "PENDING") {
		t.Fatalf("submitted, undecided: %d %s, want 202 PENDING", r.status, r.body)
	}
	r := e.do("GET", "/v1/loan-applications/app-u-typo/decision?timeout=100ms", tok, nil)
	if r.status != 404 || !strings.Contains(string(r.body), "unknown-application") {
		t.Fatalf("never submitted: %d %s, want 404 unknown-application", r.status, r.body)
	}
	if r := e.do("GET", "/v1/loan-applications/app-u-1/decision?timeout=100ms", other, nil); r.status != 404 {
		t.Fatalf("another lender's application: %d %s, want 404", r.status, r.body)
	}
}
