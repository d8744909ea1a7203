package jobs

import (
	"fmt"

	"github.com/loanflow/loanflow/pipeline"
)

// maxHeld bounds the records a gate holds before its first checkpoint.
const maxHeld = 1 << 20

// holdUntilCheckpoint passes s through, except that records a task emits
// between its opening and its first checkpoint are held and emitted at
// that checkpoint.
//
// It works around the Kafka runtime (connectors/kafka, Worker.rebalance)
// opening tasks before it begins the transaction that will carry their
// outputs: a task's goroutine starts at once, so results of async calls
// re-issued from a restored checkpoint can be produced outside any
// transaction, which the transactional producer refuses while the
// operator's state moves on: the record is lost. A checkpoint always comes
// after the transaction began, so what the gate holds until then is
// produced inside it. Remove it once the runtime begins the transaction
// before it starts tasks.
func holdUntilCheckpoint[T any](s pipeline.Stream[T], name string) pipeline.Stream[T] {
	return pipeline.AddOperator(s, name, pipeline.OperatorSpec{What: "gate"}, func() pipeline.Operator[T, T] { return &gateOp[T]{} })
}

type gateOp[T any] struct {
	ctx     *pipeline.Context
	out     pipeline.Collector[T]
	passing bool
	held    []pipeline.Record[T]
}

func (g *gateOp[T]) Open(ctx *pipeline.Context, out pipeline.Collector[T]) error {
	g.ctx, g.out = ctx, out
	return nil
}

func (g *gateOp[T]) Process(r pipeline.Record[T]) error {
	if g.passing {
		return g.out.Collect(r)
	}
	if len(g.held) >= maxHeld {
		return fmt.Errorf("gate %q: more than %d records before the task's first checkpoint", g.ctx.Name(), maxHeld)
	}
	g.held = append(g.held, r)
	return nil
}

// Snapshot releases the held records into the checkpoint's transaction.
func (g *gateOp[T]) Snapshot() error {
	if g.passing {
		return nil
	}
	g.passing = true
	for i, r := range g.held {
		if err := g.out.Collect(r); err != nil {
			return err
		}
		g.held[i] = pipeline.Record[T]{}
	}
	g.held = nil
	return nil
}

func (g *gateOp[T]) Close() error { return nil }
