package schemaregistry

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Writing the storage topic.
//
// Every write is one Kafka transaction under Config.TransactionalID, and
// the reader reads committed records only. So a write of several records
// (a permanent subject delete) is atomic, a write that failed half-way is
// never seen, and a registry that starts with the same transactional id
// fences the previous one: from then on the old one's commits fail, and it
// answers writes with 50004 while it keeps serving reads.
//
// The state is only ever changed by the tail applying committed records.
// A write waits until the tail has applied its own records, and a write
// follows a sync (below) whenever the previous outcome is uncertain, so a
// plan always sees every earlier committed write.

// syncKey marks a sync record: a NOOP with Loanflow's subject, ignored by
// both registries when read.
var syncKey = encodeSubjectKey(keyNoop, "_loanflow_sync")

// sync commits a marker and waits until the tail has read it: every record
// committed before it is then applied. The first sync of a registry also
// fences any earlier registry with the same transactional id. The caller
// holds writeMu.
func (r *Registry) sync(ctx context.Context) error {
	return r.write(ctx, &kgo.Record{Key: syncKey})
}

// writable settles the outcome of an earlier failed write before a new
// plan is made: abort what may be buffered or open, then sync. The caller
// holds writeMu.
func (r *Registry) writable(ctx context.Context) error {
	if r.fenced {
		return r.writeErr(errors.New("fenced"))
	}
	if !r.unsettled {
		return nil
	}
	if err := r.abort(ctx); err != nil {
		return r.writeErr(fmt.Errorf("settling an earlier failed write: %w", err))
	}
	r.unsettled = false
	if err := r.sync(ctx); err != nil {
		return r.writeErr(fmt.Errorf("settling an earlier failed write: %w", err))
	}
	return nil
}

// write commits recs (a nil Value is a tombstone) in one transaction and
// waits until the tail applied them. The caller holds writeMu.
func (r *Registry) write(ctx context.Context, recs ...*kgo.Record) error {
	last, err := r.commit(ctx, recs)
	if err != nil {
		r.unsettled = true
		r.noteFenced(err)
		if !r.fenced {
			if aerr := r.abort(ctx); aerr == nil {
				r.unsettled = errors.Is(err, errCommitUnknown) // a commit may have landed: sync first
			}
		}
		return fmt.Errorf("writing to %s: %w", r.cfg.Topic, err)
	}
	return r.waitApplied(ctx, last+1)
}

var errCommitUnknown = errors.New("commit outcome unknown")

// commit produces recs in a transaction and commits it, returning the last
// record's offset.
func (r *Registry) commit(ctx context.Context, recs []*kgo.Record) (int64, error) {
	if err := r.cl.BeginTransaction(); err != nil {
		return 0, err
	}
	last, err := r.produce(ctx, recs)
	if err != nil {
		return 0, err
	}
	if err := r.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return 0, fmt.Errorf("%w: %w", errCommitUnknown, err)
	}
	return last, nil
}

// produce produces recs and waits for them, or for ctx: records already
// batched ignore their context while Kafka is unreachable, and a write
// must not outlive its WriteTimeout. Records left behind belong to a
// transaction that is never committed.
func (r *Registry) produce(ctx context.Context, recs []*kgo.Record) (int64, error) {
	results := make(chan error, len(recs))
	for _, rec := range recs {
		r.cl.Produce(ctx, rec, func(_ *kgo.Record, err error) { results <- err })
	}
	for range recs {
		select {
		case err := <-results:
			if err != nil {
				return 0, err
			}
		case <-ctx.Done():
			return 0, fmt.Errorf("producing: %w", ctx.Err())
		}
	}
	var last int64
	for _, rec := range recs {
		last = max(last, rec.Offset)
	}
	return last, nil
}

// abort drops buffered records and aborts the open transaction, if any.
func (r *Registry) abort(ctx context.Context) error {
	if err := r.cl.AbortBufferedRecords(ctx); err != nil {
		return err
	}
	err := r.cl.EndTransaction(ctx, kgo.TryAbort)
	r.noteFenced(err)
	return err
}

func (r *Registry) noteFenced(err error) {
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) || errors.Is(err, kerr.TransactionalIDAuthorizationFailed) {
		if !r.fenced {
			r.log.Error("another schema registry took over writing the topic; this one now serves reads only",
				"topic", r.cfg.Topic, "transactional_id", r.cfg.TransactionalID, "err", err)
		}
		r.fenced = true
	}
}
