package peerbench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

// WorkerSpec is what a Loanflow side of a peer benchmark runs (the JSON
// argument of `loanflow bench-peer-worker`): the same three workloads as
// the Java peers, on the same topics and record formats.
type WorkerSpec struct {
	Workload string   `json:"workload"` // window, join, recovery
	Brokers  []string `json:"brokers"`
	Job      string   `json:"job"`
	In       string   `json:"in"`
	Out      string   `json:"out"`
	Table    string   `json:"table,omitempty"`
	StateDir string   `json:"state_dir"`
	CommitMS int64    `json:"commit_ms"`
	WindowMS int64    `json:"window_ms,omitempty"`
}

// WorkerMain runs the Loanflow side of a peer benchmark until ctx ends.
func WorkerMain(ctx context.Context, raw string) error {
	var s WorkerSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return fmt.Errorf("bench-peer-worker: bad spec: %w", err)
	}
	var b *pipeline.Builder
	switch s.Workload {
	case "window":
		b = windowJob(s)
	case "join":
		b = joinJob(s)
	case "recovery":
		b = recoveryJob(s)
	default:
		return fmt.Errorf("bench-peer-worker: unknown workload %q (window, join, recovery)", s.Workload)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: peerLogLevel()}))
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: s.Brokers, StateDir: s.StateDir, WorkerID: s.Job,
		CommitInterval: time.Duration(s.CommitMS) * time.Millisecond, Delivery: kafka.ExactlyOnce,
		TransactionTimeout: 10 * time.Second, Logger: logger})
	if err != nil {
		return err
	}
	return w.Run(ctx)
}

type varint struct{}

func (varint) Encode(dst []byte, v int64) ([]byte, error) { return binary.AppendVarint(dst, v), nil }
func (varint) Decode(src []byte) (int64, error) {
	v, n := binary.Varint(src)
	if n <= 0 {
		return 0, errors.New("bad varint")
	}
	return v, nil
}

// keyOf reads a record's key as the stream value.
func keyOf(raw *pipeline.RawRecord) (string, error) { return string(raw.Key), nil }

// windowJob counts records per key in tumbling event-time windows, fired
// once when the watermark passes the window's end.
func windowJob(s WorkerSpec) *pipeline.Builder {
	b := pipeline.NewBuilder(s.Job)
	src := kafka.Source(b, "in", kafka.SourceConfig[string]{Topic: s.In, Decode: keyOf})
	keyed := pipeline.KeyBy(src, "key", func(k string) string { return k }, pipeline.NoRepartition())
	res := operators.Aggregate(keyed, "count", operators.WindowOptions[string]{Assigner: operators.Tumbling(time.Duration(s.WindowMS) * time.Millisecond)},
		operators.AggregateFunc[string, int64, int64]{
			Init:   func() int64 { return 0 },
			Add:    func(a int64, _ string) int64 { return a + 1 },
			Merge:  func(a, c int64) int64 { return a + c },
			Result: func(a int64) int64 { return a },
		}, varint{})
	kafka.Sink(res, "out", kafka.SinkConfig[operators.Windowed[string, int64]]{Topic: s.Out, Codec: windowedCodec{},
		Key: func(r pipeline.Record[operators.Windowed[string, int64]]) []byte {
			return []byte(r.Value.Key + "@" + strconv.FormatInt(r.Value.Window.Start, 10))
		}})
	return b
}

// windowedCodec writes a window result as its count in decimal.
type windowedCodec struct{}

func (windowedCodec) Encode(dst []byte, w operators.Windowed[string, int64]) ([]byte, error) {
	return strconv.AppendInt(dst, w.Value, 10), nil
}

func (windowedCodec) Decode([]byte) (operators.Windowed[string, int64], error) {
	return operators.Windowed[string, int64]{}, errors.New("windowed results are only written")
}

// kv is a record of the join: its key and a decimal number.
type kv struct {
	Key string
	N   int64
}

func decodeKV(raw *pipeline.RawRecord) (kv, error) {
	n, err := strconv.ParseInt(string(raw.Value), 10, 64)
	if err != nil {
		return kv{}, fmt.Errorf("value %q is not a decimal number", raw.Value)
	}
	return kv{Key: string(raw.Key), N: n}, nil
}

type kvCodec struct{}

func (kvCodec) Encode(dst []byte, r kv) ([]byte, error) {
	dst = binary.AppendUvarint(dst, uint64(len(r.Key)))
	dst = append(dst, r.Key...)
	return binary.AppendVarint(dst, r.N), nil
}

func (kvCodec) Decode(src []byte) (kv, error) {
	n, k := binary.Uvarint(src)
	if k <= 0 || n > uint64(len(src)-k) {
		return kv{}, errors.New("bad kv")
	}
	r := kv{Key: string(src[k : k+int(n)])}
	v, m := binary.Varint(src[k+int(n):])
	if m <= 0 {
		return kv{}, errors.New("bad kv")
	}
	r.N = v
	return r, nil
}

// decimalKV writes a kv's number in decimal (its key is the record key).
type decimalKV struct{}

func (decimalKV) Encode(dst []byte, r kv) ([]byte, error) {
	return strconv.AppendInt(dst, r.N, 10), nil
}
func (decimalKV) Decode([]byte) (kv, error) { return kv{}, errors.New("join results are only written") }

// joinJob joins each probe with the table row valid at its event time and
// writes row minus probe under the probe's key.
func joinJob(s WorkerSpec) *pipeline.Builder {
	b := pipeline.NewBuilder(s.Job)
	probes := pipeline.KeyBy(kafka.Source(b, "probes", kafka.SourceConfig[kv]{Topic: s.In, Decode: decodeKV}),
		"probe-key", func(r kv) string { return r.Key }, pipeline.NoRepartition())
	table := pipeline.KeyBy(kafka.Source(b, "table", kafka.SourceConfig[kv]{Topic: s.Table, Decode: decodeKV}),
		"table-key", func(r kv) string { return r.Key }, pipeline.NoRepartition())
	j := operators.TemporalJoin(probes, table, "join", operators.TemporalJoinSpec[kv, kv, kv]{
		Join: func(p kv, row *operators.Versioned[kv]) (kv, error) {
			if row == nil {
				return kv{Key: p.Key, N: -p.N}, nil
			}
			return kv{Key: p.Key, N: row.Value.N - p.N}, nil
		},
		Retention: time.Hour, ProbeCodec: kvCodec{}, TableCodec: kvCodec{},
	})
	kafka.Sink(j, "out", kafka.SinkConfig[kv]{Topic: s.Out, Codec: decimalKV{},
		Key: func(r pipeline.Record[kv]) []byte { return []byte(r.Value.Key) }})
	return b
}

// recoveryJob counts records per key in state; records whose key starts
// with "probe" emit "KEY COUNT".
func recoveryJob(s WorkerSpec) *pipeline.Builder {
	b := pipeline.NewBuilder(s.Job)
	src := kafka.Source(b, "in", kafka.SourceConfig[string]{Topic: s.In, Decode: keyOf})
	keyed := pipeline.KeyBy(src, "key", func(k string) string { return k }, pipeline.NoRepartition())
	counts := operators.Process(keyed, "count", func() operators.ProcessFunc[string, string, string] { return &keyCounter{} })
	kafka.Sink(counts, "out", kafka.SinkConfig[string]{Topic: s.Out, Codec: pipeline.StringCodec(),
		Key: func(r pipeline.Record[string]) []byte { k, _, _ := strings.Cut(r.Value, " "); return []byte(k) }})
	return b
}

type keyCounter struct{ n *state.ValueState[int64] }

func (c *keyCounter) Open(ctx *operators.ProcessContext[string, string]) error {
	var err error
	c.n, err = state.Value[int64](ctx.Store(), ctx.StateSpec("n", 0), varint{})
	return err
}

func (c *keyCounter) Process(ctx *operators.ProcessContext[string, string], key string, _ string) error {
	n, _, err := c.n.Get(ctx.Key())
	if err != nil {
		return err
	}
	if err := c.n.Set(ctx.Key(), n+1); err != nil {
		return err
	}
	if strings.HasPrefix(key, "probe") {
		return ctx.Emit(key + " " + strconv.FormatInt(n+1, 10))
	}
	return nil
}

func (c *keyCounter) OnTimer(*operators.ProcessContext[string, string], string, pipeline.TimeDomain, int64) error {
	return nil
}

// peerLogLevel is Warn unless LOANFLOW_PEER_LOG_LEVEL names another level
// (debug shows every checkpoint's phases).
func peerLogLevel() slog.Level {
	var l slog.Level = slog.LevelWarn
	if v := os.Getenv("LOANFLOW_PEER_LOG_LEVEL"); v != "" {
		_ = l.UnmarshalText([]byte(v))
	}
	return l
}
