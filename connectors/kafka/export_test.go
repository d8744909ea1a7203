package kafka

import (
	"context"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Unprocessed returns the records w has handed to its tasks that they have
// not finished processing: the queues, the chunk waiting to enter one and
// the chunk being processed.
func Unprocessed(w *Worker) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n int64
	for _, tr := range w.tasks {
		for _, pos := range tr.positions {
			if h, p := pos.handed.Load(), pos.processed.Load(); h > p {
				n += h - p
			}
		}
	}
	return n
}

// RestoreOnly does what Run does of a savepoint restore (the job's topics,
// the rewritten changelogs and repartition topics, the committed offsets)
// and stops there, so a test can read the restored topics before any task
// consumes (and purges) them.
func RestoreOnly(ctx context.Context, w *Worker) error {
	var err error
	if w.admCl, err = kgo.NewClient(w.clientOpts()...); err != nil {
		return err
	}
	defer w.admCl.Close()
	w.adm = kadm.NewClient(w.admCl)
	if w.parts, err = ensureTopics(ctx, w.adm, w.plan, w.cfg); err != nil {
		return err
	}
	if w.rcl, err = kgo.NewClient(w.clientOpts(kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())...); err != nil {
		return err
	}
	defer w.rcl.Close()
	return w.restoreSavepoint(ctx, w.cfg.FromSavepoint)
}
