package jobs

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// brokerMaxMessageBytes is Apache Kafka's default message.max.bytes
// (1048588): a changelog record larger than this is refused by the broker
// with MESSAGE_TOO_LARGE.
const brokerMaxMessageBytes = 1048588

// TestPortfolioHeavyLenderAgainstModel: one lender decides 15,000
// applications in one minute (250/s, which made the window's event list
// outgrow a 1 MB changelog record) beside loans that are created, paid
// down, go delinquent, default, are paid off or deleted, in two lenders and
// two currencies. Every changelog record stays below the broker's message
// limit, and every emitted window equals a plain model's: counts per
// window, and the totals recomputed from scratch from each loan's latest
// state at the window's end.
func TestPortfolioHeavyLenderAgainstModel(t *testing.T) {
	lp := newLocalPortfolio(t)
	rng := rand.New(rand.NewPCG(12, 1))
	decisions := []schemas.Decision{schemas.DecisionApproved, schemas.DecisionDeclined, schemas.DecisionRefer}

	type dec struct {
		at       int64 // ms after pt0
		id       string
		lender   string
		decision schemas.Decision
	}
	type change struct {
		at, seq                   int64
		lender, currency, id      string
		kind                      schemas.LoanChange
		orig                      bool
		status                    string
		amountCents, balanceCents int64
	}
	var decs []dec
	for i := range 15000 { // P1: 250/s through minute 0
		decs = append(decs, dec{at: int64(i) * 4, id: fmt.Sprintf("h%d", i), lender: "P1", decision: decisions[rng.IntN(3)]})
	}
	for i := range 600 { // P2: a quiet lender over minutes 0-2
		decs = append(decs, dec{at: int64(i) * 300, id: fmt.Sprintf("q%d", i), lender: "P2", decision: decisions[rng.IntN(3)]})
	}
	sort.SliceStable(decs, func(i, j int) bool { return decs[i].at < decs[j].at })

	var changes []change
	type lifecycle struct {
		lender, currency, id string
		status               string
		amount, balance      int64
		done                 bool
	}
	var loans []*lifecycle
	seq := int64(100)
	for at := int64(0); at < 180_000; at += 150 + rng.Int64N(300) {
		seq++
		open := slices.IndexFunc(loans, func(l *lifecycle) bool { return !l.done })
		if len(loans) < 5 || open < 0 || rng.IntN(4) == 0 {
			l := &lifecycle{lender: []string{"P1", "P2"}[rng.IntN(2)], currency: []string{"USD", "USD", "EUR"}[rng.IntN(3)],
				id: fmt.Sprintf("l%d", len(loans)), status: schemas.LoanStatusActive, amount: 1000 + rng.Int64N(500_000)}
			l.balance = l.amount
			loans = append(loans, l)
			changes = append(changes, change{at: at, seq: seq, lender: l.lender, currency: l.currency, id: l.id, kind: schemas.LoanCreated,
				orig: true, status: l.status, amountCents: l.amount, balanceCents: l.balance})
			continue
		}
		var live []*lifecycle
		for _, l := range loans {
			if !l.done {
				live = append(live, l)
			}
		}
		l := live[rng.IntN(len(live))]
		kind := schemas.LoanUpdated
		switch r := rng.IntN(20); {
		case r < 8:
			l.balance -= rng.Int64N(l.balance/4 + 1)
		case r < 12:
			l.status = schemas.LoanStatusDelinquent
		case r < 14:
			l.status = schemas.LoanStatusDefaulted
		case r < 16:
			l.status = schemas.LoanStatusActive
		case r < 18:
			l.status, l.balance, l.done = schemas.LoanStatusPaid, 0, true
		case r < 19:
			l.status, l.done = schemas.LoanStatusChargedOff, true
		default:
			kind, l.done = schemas.LoanDeleted, true
		}
		status := l.status
		if kind == schemas.LoanDeleted {
			status = ""
		}
		changes = append(changes, change{at: at, seq: seq, lender: l.lender, currency: l.currency, id: l.id, kind: kind,
			status: status, amountCents: l.amount, balanceCents: l.balance})
	}
	cents := func(c int64) string { return fmt.Sprintf("%d.%02d", c/100, c%100) }

	// Feed both inputs in event-time order (no late events), with a
	// checkpoint every 500 records, then a record at minute 4 on each input
	// closes minutes 0-2.
	fed := 0
	checkpoint := func() {
		if fed++; fed%500 == 0 {
			if err := lp.l.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
	}
	ci := 0
	for _, d := range decs {
		for ci < len(changes) && changes[ci].at <= d.at {
			c := changes[ci]
			lp.loan(time.Duration(c.at)*time.Millisecond, c.seq, c.id, c.lender, c.currency, c.kind, c.orig, c.status, cents(c.amountCents), cents(c.balanceCents))
			ci++
			checkpoint()
		}
		lp.decision(time.Duration(d.at)*time.Millisecond, d.id, d.lender, d.decision)
		checkpoint()
	}
	for ; ci < len(changes); ci++ {
		c := changes[ci]
		lp.loan(time.Duration(c.at)*time.Millisecond, c.seq, c.id, c.lender, c.currency, c.kind, c.orig, c.status, cents(c.amountCents), cents(c.balanceCents))
		checkpoint()
	}
	lp.loan(4*time.Minute, seq+1, "x", "P9", "USD", schemas.LoanCreated, true, schemas.LoanStatusActive, "1.00", "1.00")
	lp.decision(4*time.Minute, "x", "P9", schemas.DecisionApproved)
	if err := lp.l.Checkpoint(); err != nil {
		t.Fatal(err)
	}

	// The changelog: no record the broker would refuse.
	log := pipeline.ChangelogTopic(lp.l.Plan().Job, "portfolio")
	muts := lp.l.Changelog(log)
	if len(muts) == 0 {
		t.Fatalf("no changelog records on %s", log)
	}
	biggest := 0
	for _, m := range muts {
		biggest = max(biggest, len(m.Key)+len(m.Value))
	}
	t.Logf("%d changelog records on %s, biggest %d bytes", len(muts), log, biggest)
	if biggest >= brokerMaxMessageBytes {
		t.Errorf("a changelog record of %d bytes: the broker refuses records over %d (MESSAGE_TOO_LARGE)", biggest, brokerMaxMessageBytes)
	}

	// The model: per lender|currency and minute, counts from the inputs and
	// totals recomputed from each loan's latest state.
	type window struct {
		orig, origAmount, appr, decl, ref, defaults int64
	}
	wins := map[string]map[int64]*window{}
	win := func(key string, at int64) *window {
		if wins[key] == nil {
			wins[key] = map[int64]*window{}
		}
		m := at / 60_000
		if wins[key][m] == nil {
			wins[key][m] = &window{}
		}
		return wins[key][m]
	}
	for _, d := range decs {
		w := win(d.lender+"|USD", d.at)
		switch d.decision {
		case schemas.DecisionApproved:
			w.appr++
		case schemas.DecisionDeclined:
			w.decl++
		default:
			w.ref++
		}
	}
	type loanNow struct {
		key, status string
		balance     int64
		gone        bool
	}
	var want []string
	for m := int64(0); m < 3; m++ {
		now := map[string]*loanNow{}
		for _, c := range changes {
			if c.at >= (m+1)*60_000 {
				break
			}
			key := c.lender + "|" + c.currency
			prev := now[c.id]
			if c.at >= m*60_000 {
				w := win(key, c.at)
				if c.orig {
					w.orig++
					w.origAmount += c.amountCents
				}
				if c.status == schemas.LoanStatusDefaulted && c.kind != schemas.LoanCreated && (prev == nil || prev.status != schemas.LoanStatusDefaulted) {
					w.defaults++
				}
			}
			now[c.id] = &loanNow{key: key, status: c.status, balance: c.balanceCents, gone: c.kind == schemas.LoanDeleted}
		}
		for _, key := range []string{"P1|EUR", "P1|USD", "P2|EUR", "P2|USD"} {
			w := wins[key][m]
			if w == nil {
				continue
			}
			var active, out, delinq int64
			for _, l := range now {
				if l.key != key || l.gone || l.status == schemas.LoanStatusPaid || l.status == schemas.LoanStatusChargedOff {
					continue
				}
				active++
				out += l.balance
				if l.status == schemas.LoanStatusDelinquent {
					delinq += l.balance
				}
			}
			var dr, df float64
			if out > 0 {
				dr = float64(delinq) / float64(out)
			}
			if active > 0 {
				df = min(float64(w.defaults)/float64(active), 1)
			}
			lender, currency, _ := strings.Cut(key, "|")
			want = append(want, fmt.Sprintf("%s %s +%dm: orig %d %s appr %d decl %d ref %d active %d out %s delinq %s rates %.4f %.4f",
				lender, currency, m, w.orig, cents(w.origAmount), w.appr, w.decl, w.ref, active, cents(out), cents(delinq), dr, df))
		}
	}
	got := lp.metrics()
	slices.Sort(got)
	slices.Sort(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("metrics:\n%s\nmodel:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(want) < 8 {
		t.Fatalf("the generated traffic covers only %d windows", len(want))
	}
}
