package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/internal/money"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/internal/batch"
)

type applicantReq struct {
	Name        string `json:"name"`
	SSN         string `json:"ssn"`
	Address     string `json:"address,omitempty"`
	DateOfBirth string `json:"date_of_birth,omitempty"`
}

type applicationReq struct {
	ApplicationID string       `json:"application_id,omitempty"`
	POSTerminalID string       `json:"pos_terminal_id"`
	CustomerID    *string      `json:"customer_id,omitempty"`
	Amount        string       `json:"amount"`
	Currency      string       `json:"currency"`
	EventTime     *time.Time   `json:"event_time,omitempty"`
	Applicant     applicantReq `json:"applicant"`
}

func (q *applicationReq) validate() (money.Amount, string, error) {
	if q.ApplicationID == "" {
		q.ApplicationID = "app_" + newRequestID()
	}
	if !validID(q.ApplicationID) {
		return 0, "", errors.New("application_id must be 1-64 of [A-Za-z0-9_.:-]")
	}
	if !validID(q.POSTerminalID) {
		return 0, "", errors.New("pos_terminal_id is required (1-64 of [A-Za-z0-9_.:-])")
	}
	if q.CustomerID != nil && !validID(*q.CustomerID) {
		return 0, "", errors.New("customer_id must be 1-64 of [A-Za-z0-9_.:-]")
	}
	a, err := money.Parse(q.Amount)
	if err != nil || a <= 0 {
		return 0, "", errors.New(`amount must be a positive decimal string with at most 2 decimals, e.g. "1500.00"`)
	}
	if !validCurrency(q.Currency) {
		return 0, "", errors.New("currency must be a three-letter ISO 4217 code, e.g. USD")
	}
	if q.Applicant.Name == "" || len(q.Applicant.Name) > 200 || len(q.Applicant.Address) > 500 || len(q.Applicant.DateOfBirth) > 10 {
		return 0, "", errors.New("applicant.name is required (at most 200 characters); address at most 500, date_of_birth at most 10")
	}
	if q.Applicant.DateOfBirth != "" && !validDOB(q.Applicant.DateOfBirth) {
		return 0, "", errors.New("applicant.date_of_birth must be a past date YYYY-MM-DD after 1900-01-01")
	}
	ssn, err := pii.NormalizeSSN(q.Applicant.SSN)
	if err != nil {
		return 0, "", errors.New("applicant.ssn must be nine digits (dashes allowed)")
	}
	return a, ssn, nil
}

func (s *Server) postApplication(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	if p.Lender == "" {
		writeProblem(w, r, http.StatusForbidden, "no-lender", "only a lender's client can submit applications")
		return
	}
	var req applicationReq
	if !decodeBody(w, r, &req) {
		return
	}
	amount, ssn, err := req.validate()
	if err == nil && req.EventTime != nil {
		// event_time moves the decisions job's watermarks: a time far from
		// now would make every later application late (or hold them).
		if d := time.Since(*req.EventTime); d > s.cfg.EventTimeSkew || d < -s.cfg.EventTimeSkew {
			err = fmt.Errorf("event_time must be within %v of the server's clock (now %s)", s.cfg.EventTimeSkew, time.Now().UTC().Format(time.RFC3339))
		}
	}
	if err != nil {
		writeProblem(w, r, http.StatusUnprocessableEntity, "invalid-application", err.Error())
		return
	}
	if req.CustomerID != nil {
		ok, err := s.applicantMayName(r.Context(), p.Lender, *req.CustomerID, ssn, req.Currency)
		if err != nil {
			s.log.Error("checking the named customer", "request_id", requestID(r.Context()), "err", err)
			writeProblem(w, r, http.StatusInternalServerError, "internal", "could not check the named customer")
			return
		}
		if !ok {
			if s.auditRead(w, r, s.auditEntry(r.Context(), p, "application.create", "customer/"+*req.CustomerID, "CREDIT_TRANSACTION", audit.ResultDenied)) {
				writeProblem(w, r, http.StatusUnprocessableEntity, "unknown-customer",
					"customer_id does not name a customer of this lender whose SSN is the applicant's, in this currency; omit customer_id to apply as a new applicant")
			}
			return
		}
	}
	app, err := s.sealApplication(req, p.Lender, amount, ssn)
	if err != nil {
		s.log.Error("sealing application", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not encrypt the application")
		return
	}
	val, err := s.codecs.EncodeApplication(app)
	if err != nil {
		s.log.Error("encoding application", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not encode the application")
		return
	}
	// Kafka and PostgreSQL cannot commit together: the write is audited
	// before the record is produced (so no application reaches the topic
	// unaudited), and a failed produce is audited as an error.
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "application.create", "application/"+app.ApplicationID, "CREDIT_TRANSACTION", audit.ResultOK)) {
		return
	}
	rec := &kgo.Record{Topic: s.cfg.ApplicationsTopic, Key: []byte(AppKey(app.LenderID, app.ApplicationID)), Value: val}
	if err := s.producer.ProduceSync(r.Context(), rec).FirstErr(); err != nil {
		s.log.Error("producing application", "request_id", requestID(r.Context()), "err", err)
		_ = s.audit.Append(context.WithoutCancel(r.Context()), s.auditEntry(r.Context(), p, "application.create", "application/"+app.ApplicationID, "CREDIT_TRANSACTION", audit.ResultError))
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, http.StatusServiceUnavailable, "broker-unavailable", "the application could not be queued; retry with the same application_id")
		return
	}
	w.Header().Set("Location", "/v1/loan-applications/"+app.ApplicationID+"/decision")
	writeJSON(w, http.StatusAccepted, map[string]string{
		"application_id": app.ApplicationID, "status": "PENDING",
		"decision_url": "/v1/loan-applications/" + app.ApplicationID + "/decision",
	})
}

// sealApplication encrypts the applicant's details (bound to the
// application row) and computes the SSN blind index.
func (s *Server) sealApplication(req applicationReq, lender string, amount money.Amount, ssn string) (Application, error) {
	a := req.Applicant
	ct, idx, err := SealApplicant(s.keys, req.ApplicationID, a.Name, ssn, a.Address, a.DateOfBirth)
	if err != nil {
		return Application{}, err
	}
	et := time.Now().UTC()
	if req.EventTime != nil {
		et = req.EventTime.UTC()
	}
	return Application{ApplicationID: req.ApplicationID, POSTerminalID: req.POSTerminalID, LenderID: lender,
		CustomerID: req.CustomerID, Amount: amount.String(), Currency: req.Currency, EventTime: et,
		ApplicantDetails: ct, SSNIndex: idx}, nil
}

// SealApplicant returns the applicant_details and ssn_index of a
// LoanApplication record: the applicant's details as JSON encrypted with
// the PII data keyset (associated data: table loan_applications, column
// applicant_details, row applicationID) and the blind index of the SSN.
// The ingest endpoint seals with it; so can a terminal that produces to
// loan_applications directly with the same keys (`loanflow load --direct`).
func SealApplicant(keys *pii.Keyring, applicationID, name, ssn, address, dateOfBirth string) (details, ssnIndex []byte, err error) {
	if ssn, err = pii.NormalizeSSN(ssn); err != nil {
		return nil, nil, err
	}
	plain, _ := json.Marshal(applicantReq{Name: name, SSN: ssn, Address: address, DateOfBirth: dateOfBirth})
	if details, err = keys.Encrypt(pii.Field{Table: "loan_applications", Column: "applicant_details", Row: applicationID}, plain); err != nil {
		return nil, nil, err
	}
	if ssnIndex, _, err = keys.BlindIndex(ssn); err != nil {
		return nil, nil, err
	}
	return details, ssnIndex, nil
}

// getDecision long-polls for an application's decision (?timeout=10s).
func (s *Server) getDecision(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	id := r.PathValue("id")
	if !validID(id) {
		writeProblem(w, r, http.StatusBadRequest, "bad-id", "application id must be 1-64 of [A-Za-z0-9_.:-]")
		return
	}
	timeout, err := parseTimeout(r.URL.Query().Get("timeout"), s.cfg.LongPollMax)
	if err != nil {
		writeProblem(w, r, http.StatusBadRequest, "bad-timeout", err.Error())
		return
	}
	// Keyed by the caller's lender: another lender's application of the
	// same id is a different application, and an id this lender never
	// used answers like one still pending (202), so ids cannot be probed.
	key := AppKey(p.Lender, id)
	d, ok, ch := s.hub.decision(key)
	if !ok && timeout > 0 {
		s.hub.cancelWait(key, ch)
		if !s.lenderPolls.acquire(p.Lender) {
			w.Header().Set("Retry-After", "5")
			writeProblem(w, r, http.StatusServiceUnavailable, "too-many-long-polls", "this lender has too many long-polls waiting; retry later")
			return
		}
		defer s.lenderPolls.release(p.Lender)
		extendDeadlines(w, time.Now().Add(timeout+s.cfg.RequestTimeout))
		d, ok, ch = s.hub.decision(key)
	}
	closing := false
	if !ok {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case d = <-ch:
			ok = true
		case <-t.C:
		case <-r.Context().Done():
		case <-s.closing:
			closing = true // pending: retry against a running instance
		}
		if !ok {
			s.hub.cancelWait(key, ch)
		}
	}
	if ok && d.LenderID != p.Lender {
		s.notFoundAudited(w, r, "decision.read", "application/"+id)
		return
	}
	if !ok {
		s.pending(w, r, p.Lender, id, closing)
		return
	}
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "decision.read", "application/"+id, "", audit.ResultOK)) {
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func parseTimeout(v string, max time.Duration) (time.Duration, error) {
	if v == "" {
		return min(10*time.Second, max), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, err2 := strconv.Atoi(v)
		if err2 != nil {
			return 0, fmt.Errorf("timeout must be a duration such as 10s (at most %v)", max)
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 || d > max {
		return 0, fmt.Errorf("timeout must be within 0..%v", max)
	}
	return d, nil
}

// streamDecisions serves the caller's decisions as server-sent events.
func (s *Server) streamDecisions(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	if p.Lender == "" {
		writeProblem(w, r, http.StatusForbidden, "no-lender", "decision streams are per lender")
		return
	}
	if q := r.URL.Query().Get("lender"); q != "" && q != p.Lender {
		s.notFoundAudited(w, r, "decision.stream", resourceOf("decisions/lender=", q))
		return
	}
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "decision.stream", "decisions/lender="+p.Lender, "", audit.ResultOK)) {
		return
	}
	s.serveEvents(w, r, p.Lender, map[string]bool{"decision": true}, nil)
}

// serveEvents writes SSE until the client leaves, the server shuts down
// or the subscriber falls too far behind.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request, lender string, want map[string]bool, initial []event) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeProblem(w, r, http.StatusInternalServerError, "internal", "streaming unsupported")
		return
	}
	if !s.lenderStreams.acquire(lender) {
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, http.StatusServiceUnavailable, "too-many-streams", "this lender has too many open event streams; close one or retry later")
		return
	}
	defer s.lenderStreams.release(lender)
	if !s.streams.TryAcquire(1) {
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, http.StatusServiceUnavailable, "too-many-streams", "too many open event streams; retry later")
		return
	}
	defer s.streams.Release(1)
	extendDeadlines(w, time.Time{})
	sub, at := s.hub.subscribeAt(lender, s.cfg.SSEBuffer)
	defer s.hub.unsubscribe(sub)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, "retry: 2000\n\n")
	for _, ev := range initial {
		writeEvent(w, ev)
	}
	if id := lastEventID(r); id != "" && want["decision"] {
		s.resume(r.Context(), w, lender, id, at)
	}
	fl.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case ev := <-sub.ch:
			if want[ev.name] {
				writeEvent(w, ev)
				fl.Flush()
			}
		case <-ping.C:
			_, _ = fmt.Fprint(w, ": ping\n\n")
			fl.Flush()
		case <-sub.done:
			return
		case <-r.Context().Done():
			return
		case <-s.closing:
			return
		}
	}
}

func writeEvent(w http.ResponseWriter, ev event) {
	b, _ := json.Marshal(ev.data)
	if ev.id != "" {
		_, _ = fmt.Fprintf(w, "id: %s\n", ev.id)
	}
	_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev.name, strings.ReplaceAll(string(b), "\n", ""))
}

// applicantMayName reports whether an application of lender may name
// customer: the customer exists, its credit is in currency, and either the
// applicant's SSN is the customer's (its blind index under any index key
// equals the customer's; the lender then gains the application
// relationship) or the lender already has a relationship with the
// customer (a different applicant is then REFERred by the decisions job,
// which compares the blind indexes too).
func (s *Server) applicantMayName(ctx context.Context, lender, customer, ssn, currency string) (bool, error) {
	c, err := s.named.Do(ctx, customer)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if c.currency != currency {
		return false, nil
	}
	idxs, err := s.keys.BlindIndexes(ssn)
	if err != nil {
		return false, err
	}
	match := false
	for _, x := range idxs {
		match = match || pii.EqualIndex(x, c.ssnIndex)
	}
	if !match {
		rel, err := s.relationship(ctx, lender, customer, relCustomer|relApplication|relLoan)
		return rel != 0, err
	}
	// Relationships are never removed: one this API recorded (or read)
	// needs no second insert.
	if s.rels.get(lender, customer)&relApplication != 0 {
		return true, nil
	}
	if err := relate(ctx, s.pool, lender, customer, basisApplication); err != nil {
		return false, err
	}
	s.rels.add(lender, customer, relApplication)
	return true, nil
}

// namedCustomer is what an application's check needs of the customer it
// names.
type namedCustomer struct {
	ssnIndex []byte
	currency string
}

// loadNamedCustomers reads a batch of named customers in one query (a
// customer not found gets pgx.ErrNoRows).
func (s *Server) loadNamedCustomers(ctx context.Context, calls []*batch.Call[string, namedCustomer]) {
	found := make(map[string]namedCustomer, len(calls))
	rows, err := s.pool.Query(ctx, "SELECT customer_id, ssn_index, credit_currency FROM customers WHERE customer_id = ANY($1)", batch.Keys(calls))
	if err == nil {
		for rows.Next() {
			var id string
			var c namedCustomer
			if err = rows.Scan(&id, &c.ssnIndex, &c.currency); err != nil {
				break
			}
			found[id] = c
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err != nil {
		err = fmt.Errorf("api: reading the named customer: %w", err)
	}
	batch.Answer(calls, found, err, pgx.ErrNoRows)
}

// resume replays the lender's decisions between a reconnecting client's
// Last-Event-ID and the position its new subscription starts at, so it
// misses none.
func (s *Server) resume(ctx context.Context, w http.ResponseWriter, lender, id string, at position) {
	from, err := parsePosition(id)
	if err != nil {
		_, _ = fmt.Fprintf(w, ": %v; nothing replayed\n\n", err)
		return
	}
	n := 0
	complete, err := s.replay(ctx, lender, from, at, func(d Decision, id string) {
		writeEvent(w, event{name: "decision", data: d, id: id})
		n++
	})
	switch {
	case err != nil:
		s.log.Warn("replaying decisions", "lender", lender, "err", err)
		_, _ = fmt.Fprint(w, ": replay failed; decisions since your last event may be missing\n\n")
	case !complete:
		_, _ = fmt.Fprintf(w, ": replay stopped after %d decisions (too far behind); reload the full state\n\n", n)
	}
}

// pending answers a long-poll that timed out: 202 PENDING for an
// application this API accepted from the lender, 404 unknown-application
// for one it never did (a typo, another lender's id, an id never
// submitted), which would otherwise stay PENDING forever.
func (s *Server) pending(w http.ResponseWriter, r *http.Request, lender, id string, closing bool) {
	known, err := true, error(nil)
	if !closing {
		known, err = s.knownApplication(r.Context(), lender, id)
	}
	if err != nil {
		s.log.Warn("checking an application id", "request_id", requestID(r.Context()), "err", err)
		known = true // cannot tell: the safe answer is pending
	}
	if !known {
		writeProblem(w, r, http.StatusNotFound, "unknown-application",
			fmt.Sprintf("no application %q was submitted by lender %s: decisions exist only for applications accepted with 202", id, lender))
		return
	}
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusAccepted, map[string]string{"application_id": id, "status": "PENDING"})
}

// knownApplication reports whether lender submitted application id
// through the API: its application.create audit entry, chained or still
// pending.
func (s *Server) knownApplication(ctx context.Context, lender, id string) (bool, error) {
	var known bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM audit_log WHERE action = 'application.create' AND resource = $1 AND lender_id = $2 AND result = $3)
	    OR EXISTS (SELECT 1 FROM audit_pending WHERE action = 'application.create' AND resource = $1 AND lender_id = $2 AND result = $3)`,
		"application/"+id, lender, audit.ResultOK).Scan(&known)
	return known, err
}
