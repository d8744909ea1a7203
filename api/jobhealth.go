package api

import (
	"fmt"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// Thresholds of a job card's status on the operator page.
const (
	// staleCheckpointSeconds: a worker whose last checkpoint is older
	// commits nothing (loanflow job status uses the same minute).
	staleCheckpointSeconds = 60
	// backpressureRatio: a task queue this full stalls its consumer.
	backpressureRatio = 0.9
)

// JobHealth is one job's card on the operator page: its consumer group and
// what its workers' metrics say.
type JobHealth struct {
	Job   string `json:"job"`
	Group string `json:"group,omitempty"`
	// State is the group's state (Stable, PreparingRebalance, Empty...);
	// "unknown" when the job has metrics but no group listed.
	State   string   `json:"state"`
	Workers []string `json:"workers"`
	// Lag is the group's lag net of transaction markers; -1 unknown.
	Lag      int64  `json:"lag"`
	LagExact bool   `json:"lag_exact"`
	LagError string `json:"lag_error,omitempty"`
	// CheckpointAgeSeconds is the oldest of the workers' last checkpoints;
	// -1 when no worker has committed one.
	CheckpointAgeSeconds float64 `json:"checkpoint_age_seconds"`
	// CheckpointMeanSeconds is the mean checkpoint duration since the
	// workers started; -1 without a checkpoint.
	CheckpointMeanSeconds float64 `json:"checkpoint_mean_seconds"`
	CheckpointFailures    float64 `json:"checkpoint_failures"`
	// Backpressure is the fullest task input queue (0..1).
	Backpressure float64 `json:"backpressure"`
	DeadLetters  float64 `json:"dead_letters"`
	// Bureau is the credit-bureau client's health, for a job that calls
	// the bureau (its workers export loanflow_decisions_bureau_*).
	Bureau *BureauHealth `json:"bureau,omitempty"`
	// Status is ok, warn or fail; Problems says why.
	Status   string   `json:"status"`
	Problems []string `json:"problems"`
}

// BureauHealth is a job's credit-bureau client: its circuit breaker and
// its calls by result since the workers started.
type BureauHealth struct {
	Breaker string             `json:"breaker"` // closed, half-open, open
	Calls   map[string]float64 `json:"calls"`
}

// jobOfGroup is the job whose consumer group is group ("" for a group
// that is no job's).
func jobOfGroup(group string) string {
	job, ok := strings.CutPrefix(group, "loanflow-")
	if !ok || !validID(job) {
		return ""
	}
	return job
}

// jobsOf merges the jobs' groups and their workers' scraped metrics into
// one card per job.
func jobsOf(groups []GroupHealth, scraped []map[string]*dto.MetricFamily, now time.Time) []JobHealth {
	byJob := map[string]*JobHealth{}
	get := func(job string) *JobHealth {
		if byJob[job] == nil {
			byJob[job] = &JobHealth{Job: job, State: "unknown", Workers: []string{}, Lag: -1, CheckpointAgeSeconds: -1,
				CheckpointMeanSeconds: -1, Problems: []string{}}
		}
		return byJob[job]
	}
	for _, g := range groups {
		if job := jobOfGroup(g.Group); job != "" {
			j := get(job)
			j.Group, j.State, j.Workers = g.Group, g.State, g.Members
			j.Lag, j.LagExact, j.LagError = g.Lag, g.LagExact, g.LagError
		}
	}
	for _, fams := range scraped {
		addJobMetrics(fams, now, get)
	}
	out := make([]JobHealth, 0, len(byJob))
	for _, j := range byJob {
		j.judge()
		out = append(out, *j)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Job < out[k].Job })
	return out
}

// jobMetric reads one engine family per job label.
func jobMetric(fams map[string]*dto.MetricFamily, name string, fn func(job string, m *dto.Metric)) {
	for _, m := range fams[name].GetMetric() {
		if job := label(m, "job"); job != "" {
			fn(job, m)
		}
	}
}

// addJobMetrics adds one endpoint's engine and bureau metrics to the jobs
// it serves.
func addJobMetrics(fams map[string]*dto.MetricFamily, now time.Time, get func(string) *JobHealth) {
	ckptSum, ckptCount := map[string]float64{}, map[string]uint64{}
	jobMetric(fams, "loanflow_engine_last_checkpoint_timestamp_seconds", func(job string, m *dto.Metric) {
		j := get(job)
		if value(m) > 0 {
			j.CheckpointAgeSeconds = max(j.CheckpointAgeSeconds, now.Sub(unixTime(value(m))).Seconds(), 0)
		}
	})
	jobMetric(fams, "loanflow_engine_checkpoint_duration_seconds", func(job string, m *dto.Metric) {
		ckptSum[job] += m.GetHistogram().GetSampleSum()
		ckptCount[job] += m.GetHistogram().GetSampleCount()
	})
	for job, n := range ckptCount {
		if n > 0 {
			get(job).CheckpointMeanSeconds = ckptSum[job] / float64(n)
		}
	}
	jobMetric(fams, "loanflow_engine_checkpoint_failures_total", func(job string, m *dto.Metric) { get(job).CheckpointFailures += value(m) })
	jobMetric(fams, "loanflow_engine_dead_letters_total", func(job string, m *dto.Metric) { get(job).DeadLetters += value(m) })
	jobMetric(fams, "loanflow_engine_queue_fill_ratio", func(job string, m *dto.Metric) {
		get(job).Backpressure = max(get(job).Backpressure, value(m))
	})
	if b := bureauOf(fams); b != nil {
		get(bureauJob).Bureau = b
	}
}

// bureauJob is the job whose workers call the credit bureau: the bureau
// client's series are named after it (loanflow_decisions_bureau_*) and
// carry no job label.
const bureauJob = "decisions"

// bureauOf reads the bureau client's breaker and calls; nil when the
// endpoint serves no bureau client.
func bureauOf(fams map[string]*dto.MetricFamily) *BureauHealth {
	st := fams["loanflow_decisions_bureau_breaker_state"].GetMetric()
	if len(st) == 0 {
		return nil
	}
	b := &BureauHealth{Breaker: "closed", Calls: map[string]float64{}}
	switch value(st[0]) {
	case 1:
		b.Breaker = "half-open"
	case 2:
		b.Breaker = "open"
	}
	for _, m := range fams["loanflow_decisions_bureau_calls_total"].GetMetric() {
		b.Calls[label(m, "result")] += value(m)
	}
	return b
}

// judge sets the card's status and the problems behind it.
func (j *JobHealth) judge() {
	fail := func(p string) { j.Status, j.Problems = "fail", append(j.Problems, p) }
	warn := func(p string) {
		if j.Status != "fail" {
			j.Status = "warn"
		}
		j.Problems = append(j.Problems, p)
	}
	j.Status = "ok"
	switch {
	case j.Group != "" && len(j.Workers) == 0:
		fail("no worker in group " + j.Group + " (the job is stopped)")
	case j.CheckpointAgeSeconds > staleCheckpointSeconds:
		fail(fmt.Sprintf("last checkpoint %.0fs ago", j.CheckpointAgeSeconds))
	}
	if j.Bureau != nil && j.Bureau.Breaker == "open" {
		fail("bureau circuit breaker open: decisions fall back")
	} else if j.Bureau != nil && j.Bureau.Breaker == "half-open" {
		warn("bureau circuit breaker half-open")
	}
	if j.Backpressure >= backpressureRatio {
		warn(fmt.Sprintf("backpressure: a task queue is %.0f%% full", 100*j.Backpressure))
	}
	if j.DeadLetters > 0 {
		warn(fmt.Sprintf("%.0f records dead-lettered", j.DeadLetters))
	}
	if j.CheckpointFailures > 0 {
		warn(fmt.Sprintf("%.0f checkpoints failed", j.CheckpointFailures))
	}
	if j.LagError != "" {
		warn("lag unknown: " + j.LagError)
	}
}
