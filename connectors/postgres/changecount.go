package postgres

import "github.com/prometheus/client_golang/prometheus"

// changeKey labels loanflow_cdc_changes_total.
type changeKey struct{ table, op string }

// changeCounter counts change records by table and op once their Kafka
// transaction commits (an aborted transaction's records are not counted).
// Owned by the writer goroutine; sessions run one at a time.
type changeCounter struct {
	vec     *prometheus.CounterVec
	pending map[changeKey]int
}

func newChangeCounter(reg prometheus.Registerer, name string) *changeCounter {
	vec := registerCollector(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "loanflow_cdc_changes_total", Help: "Change records committed to Kafka, by table (schema.table) and op (c, u, d, r; t for truncates).",
		ConstLabels: prometheus.Labels{"reader": name},
	}, []string{"table", "op"})).(*prometheus.CounterVec)
	return &changeCounter{vec: vec, pending: map[changeKey]int{}}
}

// sessionStart drops the counts of a transaction the last session did not
// commit and creates the series of every published table at 0, so that
// increase() and rate() see the first change.
func (c *changeCounter) sessionStart(pub []pubTable) {
	clear(c.pending)
	for _, p := range pub {
		for _, op := range []string{"c", "u", "d", "r"} {
			c.vec.WithLabelValues(p.schema+"."+p.name, op)
		}
	}
}

// note counts a change record produced in the open Kafka transaction.
func (c *changeCounter) note(ev *event) {
	c.pending[changeKey{ev.t.qualified(), opNames[ev.op]}]++
}

// committed adds the open transaction's counts to the counter.
func (c *changeCounter) committed() {
	for k, n := range c.pending {
		c.vec.WithLabelValues(k.table, k.op).Add(float64(n))
	}
	clear(c.pending)
}
