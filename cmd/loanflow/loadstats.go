package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// loadApp is one application `loanflow load` submitted.
type loadApp struct {
	known     bool
	sent      time.Time
	accepted  bool // answered 202 (or, --direct, acknowledged by the broker)
	decisions int
	basis     string
	latency   time.Duration // submission to the first decision read
	answer    time.Duration // submission to its answer (202)
	inEngine  time.Duration // submission to the decision's decided_at (the engine's clock); -1: unknown
}

// loadTracker holds the submissions and decisions of a run. The submit
// workers, the decision reader and the progress printer share it.
type loadTracker struct {
	mu struct {
		sync.Mutex
		apps     map[string]*loadApp
		rejected map[string]int // reason -> submissions
		accepted int
		decided  int       // accepted applications with a decision
		first    time.Time // first and last submission
		last     time.Time
		firstDec time.Time // first and last decision read
		lastDec  time.Time
		firsts   int             // applications with a decision read
		recent   []time.Duration // latencies since the last progress line
	}
}

func newLoadTracker() *loadTracker {
	t := &loadTracker{}
	t.mu.apps = map[string]*loadApp{}
	t.mu.rejected = map[string]int{}
	return t
}

// sending records a submission before it is sent, so a decision read
// before its 202 is processed still finds it.
func (t *loadTracker) sending(id string, known bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	t.mu.apps[id] = &loadApp{known: known, sent: now}
	if t.mu.first.IsZero() {
		t.mu.first = now
	}
	t.mu.last = now
}

// answered records the outcome: accepted, or rejected for reason.
func (t *loadTracker) answered(id string, accepted bool, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.mu.apps[id]
	a.answer = time.Since(a.sent)
	if !accepted {
		t.mu.rejected[reason]++
		return
	}
	a.accepted = true
	t.mu.accepted++
	if a.decisions > 0 {
		t.mu.decided++
	}
}

// decided records a decision read for one of this run's applications.
func (t *loadTracker) decided(id, basis string, decidedAt time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.mu.apps[id]
	if !ok {
		return // submitted by an earlier run with the same prefix
	}
	a.decisions++
	if a.decisions > 1 {
		return
	}
	a.basis, a.latency = basis, time.Since(a.sent)
	a.inEngine = -1
	if !decidedAt.IsZero() {
		a.inEngine = decidedAt.Sub(a.sent)
	}
	now := a.sent.Add(a.latency)
	if t.mu.firstDec.IsZero() {
		t.mu.firstDec = now
	}
	t.mu.lastDec = now
	t.mu.firsts++
	t.mu.recent = append(t.mu.recent, a.latency)
	if a.accepted {
		t.mu.decided++
	}
}

// pending is the number of accepted applications without a decision.
func (t *loadTracker) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.accepted - t.mu.decided
}

// progress is one line of live figures; it resets the recent latencies.
func (t *loadTracker) progress(elapsed time.Duration) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	rejected := 0
	for _, n := range t.mu.rejected {
		rejected += n
	}
	recent := t.mu.recent
	t.mu.recent = nil
	slices.Sort(recent)
	return fmt.Sprintf("%6s  sent %d (%.1f/s)  accepted %d  rejected %d  decided %d  in flight %d  p50 %s  p99 %s",
		elapsed.Round(time.Second), len(t.mu.apps), t.rateLocked(), t.mu.accepted, rejected,
		t.mu.decided, t.mu.accepted-t.mu.decided, fmtPct(recent, 0.50), fmtPct(recent, 0.99))
}

// rateLocked is the submission rate achieved between the first and the
// last submission.
func (t *loadTracker) rateLocked() float64 {
	if len(t.mu.apps) < 2 {
		return 0
	}
	return float64(len(t.mu.apps)-1) / max(t.mu.last.Sub(t.mu.first).Seconds(), 0.001)
}

func fmtPct(sorted []time.Duration, q float64) string {
	if len(sorted) == 0 {
		return "-"
	}
	return percentile(sorted, q).Round(time.Millisecond).String()
}

// percentile of an ascending slice (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// loadSummary is the final report of `loanflow load` (--output json).
type loadSummary struct {
	Mode    string  `json:"mode"`    // api or direct
	Run     string  `json:"run"`     // prefix of the application ids
	Seconds float64 `json:"seconds"` // of submitting
	Rate    float64 `json:"rate"`    // submissions per second achieved
	// DecisionRate is the decisions of this run read per second, between
	// the first and the last one read (throughput through the stack).
	DecisionRate float64        `json:"decision_rate"`
	Submitted    int            `json:"submitted"`
	Accepted     int            `json:"accepted"`
	Rejected     int            `json:"rejected"`
	RejectedBy   map[string]int `json:"rejected_by"`
	Decided      int            `json:"decided"`
	Missing      int            `json:"missing"`
	Duplicated   int            `json:"duplicated"`
	Unconfirmed  int            `json:"decided_without_acceptance"` // decided, but the submission got no 202
	// LatencyMs is submission to decision, per decision basis and ALL.
	LatencyMs map[string]latencyStats `json:"latency_ms"`
	// StagesMs splits the latency of every decided application:
	// "answered" is submission to its 202, "decided" submission to the
	// decision's decided_at (stamped by the decisions job; the same
	// clock on one machine), "visible" decided_at to the decision read
	// (the job's commit and the delivery to a read_committed consumer).
	StagesMs      map[string]latencyStats `json:"stages_ms,omitempty"`
	MissingIDs    []string                `json:"missing_ids,omitempty"`    // the first 20
	DuplicatedIDs []string                `json:"duplicated_ids,omitempty"` // the first 20
}

type latencyStats struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// summary computes the final report.
func (t *loadTracker) summary(mode, run string) loadSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := loadSummary{Mode: mode, Run: run, Seconds: t.mu.last.Sub(t.mu.first).Seconds(), Rate: t.rateLocked(),
		Submitted: len(t.mu.apps), RejectedBy: map[string]int{}, LatencyMs: map[string]latencyStats{}}
	if span := t.mu.lastDec.Sub(t.mu.firstDec).Seconds(); span > 0 {
		s.DecisionRate = float64(t.mu.firsts-1) / span
	}
	for r, n := range t.mu.rejected {
		s.RejectedBy[r] = n
		s.Rejected += n
	}
	lat, stages := map[string][]time.Duration{}, map[string][]time.Duration{}
	for id, a := range t.mu.apps {
		s.count(id, a)
		if a.decisions > 0 {
			lat[a.basis] = append(lat[a.basis], a.latency)
			lat["ALL"] = append(lat["ALL"], a.latency)
			if a.accepted {
				stages["answered"] = append(stages["answered"], a.answer)
			}
			if a.inEngine >= 0 {
				stages["decided"] = append(stages["decided"], a.inEngine)
				stages["visible"] = append(stages["visible"], max(a.latency-a.inEngine, 0))
			}
		}
	}
	sort.Strings(s.MissingIDs)
	sort.Strings(s.DuplicatedIDs)
	s.MissingIDs = s.MissingIDs[:min(len(s.MissingIDs), 20)]
	s.DuplicatedIDs = s.DuplicatedIDs[:min(len(s.DuplicatedIDs), 20)]
	for basis, ds := range lat {
		s.LatencyMs[basis] = statsOf(ds)
	}
	if len(stages) > 0 {
		s.StagesMs = map[string]latencyStats{}
		for st, ds := range stages {
			s.StagesMs[st] = statsOf(ds)
		}
	}
	return s
}

func statsOf(ds []time.Duration) latencyStats {
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return latencyStats{Count: len(ds), P50: ms(percentile(ds, 0.5)), P90: ms(percentile(ds, 0.9)),
		P99: ms(percentile(ds, 0.99)), Max: ms(ds[len(ds)-1])}
}

func (s *loadSummary) count(id string, a *loadApp) {
	switch {
	case a.accepted:
		s.Accepted++
		if a.decisions > 0 {
			s.Decided++
		} else {
			s.Missing++
			s.MissingIDs = append(s.MissingIDs, id)
		}
	case a.decisions > 0:
		s.Unconfirmed++
	}
	if a.decisions > 1 {
		s.Duplicated++
		s.DuplicatedIDs = append(s.DuplicatedIDs, id)
	}
}

// err is non-nil when an accepted application has no decision or any
// application has two.
func (s loadSummary) err() error {
	if s.Missing == 0 && s.Duplicated == 0 {
		return nil
	}
	return fmt.Errorf("%d accepted applications without a decision %v, %d applications decided more than once %v",
		s.Missing, s.MissingIDs, s.Duplicated, s.DuplicatedIDs)
}

// loadBases are the decision bases in report order, with what they mean.
var loadBases = [][2]string{
	{"CUSTOMER_360", "known customer"},
	{"CREDIT_BUREAU", "unknown applicant (or customer not found)"},
	{"FALLBACK", "bureau failed"},
	{"ALL", ""},
}

func (s loadSummary) write(w io.Writer, format string) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "run %s (%s): submitted for %.1fs at %.1f/s, decided at %.1f/s\n\n", s.Run, s.Mode, s.Seconds, s.Rate, s.DecisionRate)
	fmt.Fprintf(tw, "submitted\t%d\naccepted\t%d\nrejected\t%d\n", s.Submitted, s.Accepted, s.Rejected)
	reasons := make([]string, 0, len(s.RejectedBy))
	for r := range s.RejectedBy {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		fmt.Fprintf(tw, "  %s\t%d\n", r, s.RejectedBy[r])
	}
	fmt.Fprintf(tw, "decided\t%d\nmissing (accepted, no decision)\t%d\nduplicated (two decisions)\t%d\ndecided without acceptance (no 202)\t%d\n\n",
		s.Decided, s.Missing, s.Duplicated, s.Unconfirmed)
	fmt.Fprintln(tw, "BASIS\tAPPLICATIONS\tP50\tP90\tP99\tMAX\t(submission to decision)")
	for _, b := range loadBases {
		l, ok := s.LatencyMs[b[0]]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0fms\t%.0fms\t%.0fms\t%.0fms\t%s\n", b[0], l.Count, l.P50, l.P90, l.P99, l.Max, b[1])
	}
	if len(s.StagesMs) > 0 {
		fmt.Fprintln(tw, "\nSTAGE\tAPPLICATIONS\tP50\tP90\tP99\tMAX\t(every decided application)")
		for _, st := range [][2]string{{"answered", "submission to the API's 202"}, {"decided", "submission to the decision's decided_at"},
			{"visible", "decided_at to the decision read (commit, delivery)"}} {
			if l, ok := s.StagesMs[st[0]]; ok {
				fmt.Fprintf(tw, "%s\t%d\t%.0fms\t%.0fms\t%.0fms\t%.0fms\t%s\n", st[0], l.Count, l.P50, l.P90, l.P99, l.Max, st[1])
			}
		}
	}
	if len(s.MissingIDs)+len(s.DuplicatedIDs) > 0 {
		fmt.Fprintf(tw, "\nmissing: %s\nduplicated: %s\n", strings.Join(s.MissingIDs, " "), strings.Join(s.DuplicatedIDs, " "))
	}
	return tw.Flush()
}

// submissionLog is the --submissions file: one line per submission,
// "ID\taccepted" or "ID\trejected\tREASON". Its methods do nothing on a
// nil log and are safe for concurrent use.
type submissionLog struct {
	mu struct {
		sync.Mutex
		f   *os.File
		w   *bufio.Writer
		err error // the first write error
	}
}

func createSubmissionLog(path string) (*submissionLog, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--submissions: %w", err)
	}
	l := &submissionLog{}
	l.mu.f, l.mu.w = f, bufio.NewWriter(f)
	return l, nil
}

func (l *submissionLog) add(id string, accepted bool, reason string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.w == nil || l.mu.err != nil {
		return
	}
	if accepted {
		_, l.mu.err = fmt.Fprintf(l.mu.w, "%s\taccepted\n", id)
	} else {
		_, l.mu.err = fmt.Fprintf(l.mu.w, "%s\trejected\t%s\n", id, reason)
	}
}

// close flushes and closes the file; later calls return nil.
func (l *submissionLog) close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.w == nil {
		return nil
	}
	err := l.mu.err
	if ferr := l.mu.w.Flush(); err == nil {
		err = ferr
	}
	if cerr := l.mu.f.Close(); err == nil {
		err = cerr
	}
	l.mu.w = nil
	if err != nil {
		return fmt.Errorf("--submissions: %w", err)
	}
	return nil
}
