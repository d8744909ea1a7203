package kafka

import (
	"time"
)

// summaryState accumulates what the periodic summary line reports; only
// Run's goroutine touches it.
type summaryState struct {
	since    time.Time
	records  int64
	full     int // batches handed to a full queue (backpressure)
	lags     map[topicPartition]int64
	lastLag  int64
	produced int64 // w.producedTotal at the last summary
	// behind: input partitions found behind their stable offset at the
	// last summary, with the position and stable offset then.
	behind map[topicPartition][2]int64
}

type topicPartition struct {
	topic string
	part  int32
}

func (s *summaryState) observe(topic string, p int32, records int, lag int64, full bool) {
	if s.lags == nil {
		s.lags = map[topicPartition]int64{}
	}
	s.records += int64(records)
	s.lags[topicPartition{topic, p}] = lag
	if full {
		s.full++
	}
}

// maybeSummarize logs the summary line every SummaryInterval, and warns
// about what degraded since the last one.
func (w *Worker) maybeSummarize() {
	s := &w.summary
	now := time.Now()
	if s.since.IsZero() {
		s.since = now
		return
	}
	if w.cfg.SummaryInterval < 0 || now.Sub(s.since) < w.cfg.SummaryInterval {
		return
	}
	secs := now.Sub(s.since).Seconds()
	var lag int64
	for tp, l := range s.lags {
		if !w.assigned(tp.topic, tp.part) {
			delete(s.lags, tp)
			continue
		}
		lag += l
	}
	produced := w.producedTotal.Load()
	age := "never"
	var ageD time.Duration
	if last := w.LastCheckpoint(); !last.IsZero() {
		ageD = now.Sub(last).Round(time.Millisecond)
		age = ageD.String()
	}
	w.log.Info("job summary", "records_in_per_sec", round1(float64(s.records)/secs), "records_out_per_sec", round1(float64(produced-s.produced)/secs),
		"lag", lag, "tasks", len(w.tasks), "paused_tasks", len(w.paused), "checkpoints", w.Checkpoints(), "checkpoint_age", age)
	if stale := 10*w.cfg.CommitInterval + 10*time.Second; ageD > stale {
		w.log.Warn("degraded: no checkpoint committed recently; outputs are held back", "checkpoint_age", age, "commit_interval", w.cfg.CommitInterval.String())
	}
	if s.full > 0 {
		w.log.Warn("degraded: backpressure: task input queues were full", "full_batches", s.full, "over", now.Sub(s.since).Round(time.Second).String())
	}
	if lag > s.lastLag && s.lastLag > 0 && s.records > 0 {
		w.log.Warn("degraded: lag is growing: the job reads slower than its inputs grow", "lag", lag, "previous_lag", s.lastLag)
	}
	w.warnStuckInputs()
	s.since, s.records, s.full, s.lastLag, s.produced = now, 0, 0, lag, produced
}

// warnStuckInputs warns about input partitions that stay behind their
// last stable offset with everything handed over fed, without moving
// between two summaries: such a partition is never idle, so it holds its
// task's watermark (windows stop firing) although the task has nothing to
// do. Its position, the stable offset and whether the task is paused say
// which side stalled (fetching, or the listing of offsets).
func (w *Worker) warnStuckInputs() {
	s := &w.summary
	e := w.ends.Load()
	now := map[topicPartition][2]int64{}
	if e != nil {
		for id, tr := range w.tasks {
			for topic, pos := range tr.positions {
				handed, processed := pos.handed.Load(), pos.processed.Load()
				lso, ok := e.lso[topic][id.part]
				if !ok || processed < handed || lso <= max(handed, e.start[topic][id.part]) {
					continue
				}
				tp := topicPartition{topic, id.part}
				now[tp] = [2]int64{handed, lso}
				if prev, ok := s.behind[tp]; ok && prev == now[tp] {
					w.log.Warn("input behind its stable offset without progress: the partition is never idle and holds the task's watermark",
						"topic", topic, "partition", id.part, "position", handed, "stable_offset", lso, "task", id.String(), "paused", w.paused[id])
				}
			}
		}
	}
	s.behind = now
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
