package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/schemas"
)

func init() {
	addCommand(newTopicCmd)
	addCommand(newDecisionsCmd)
}

// readFlags are the flags of the commands that read a topic.
type readFlags struct {
	brokers, registry string
	fromBeginning     bool
	max               int
	out               outputFlag
}

func (r *readFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&r.brokers, "brokers", envOr("LOANFLOW_BROKERS", "127.0.0.1:9092"), "Kafka seed brokers, comma-separated (env LOANFLOW_BROKERS)")
	f.StringVar(&r.registry, "schema-registry", envOr("LOANFLOW_SCHEMA_REGISTRY", "http://127.0.0.1:8081"), "schema registry URL (env LOANFLOW_SCHEMA_REGISTRY)")
	f.BoolVar(&r.fromBeginning, "from-beginning", false, "read from the topic's first record (default: only new records)")
	f.IntVar(&r.max, "max", 0, "stop after this many records (0: until Ctrl-C)")
	r.out.register(cmd)
}

// reader reads topic with read_committed, without a consumer group.
func (r readFlags) reader(topic string) (*kgo.Client, error) {
	start := kgo.NewOffset().AtEnd()
	if r.fromBeginning {
		start = kgo.NewOffset().AtStart()
	}
	return kgo.NewClient(kgo.SeedBrokers(splitList(r.brokers)...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(start))
}

// each calls fn for every record until ctx ends, fn says stop, or max.
func (r readFlags) each(ctx context.Context, cl *kgo.Client, fn func(*kgo.Record) (bool, error)) error {
	n := 0
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				ferr = fmt.Errorf("reading %s/%d: %w", t, p, err)
			}
		})
		if ferr != nil {
			return ferr
		}
		for it := fs.RecordIter(); !it.Done(); {
			shown, err := fn(it.Next())
			if err != nil {
				return err
			}
			if shown {
				n++
			}
			if r.max > 0 && n >= r.max {
				return nil
			}
		}
	}
}

func newTopicCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "topic", Short: "Read Kafka topics, decoding Avro through the schema registry"}
	cmd.AddCommand(newTopicConsumeCmd())
	return cmd
}

// consumed is one record as `topic consume` prints it.
type consumed struct {
	Topic     string          `json:"topic"`
	Partition int32           `json:"partition"`
	Offset    int64           `json:"offset"`
	Timestamp time.Time       `json:"timestamp"`
	Key       json.RawMessage `json:"key"`
	Value     json.RawMessage `json:"value"`
	SchemaID  int             `json:"schema_id,omitempty"`
}

func newTopicConsumeCmd() *cobra.Command {
	var rf readFlags
	cmd := &cobra.Command{
		Use:   "consume TOPIC",
		Short: "Print a topic's committed records, Avro decoded through the schema registry",
		Long: `Reads TOPIC with read_committed (no consumer group: nothing is committed)
and prints each record. Keys and values in the Confluent wire format (magic
byte 0, schema id, Avro binary) are decoded with their writer schema from
the registry and printed as Avro JSON; other bytes print as a JSON string.
With --output json, one JSON object per line; the table form is one line
per record.`,
		Example: `  loanflow topic consume loan_decisions --from-beginning --max 10
  loanflow topic consume customer_360 --output json | jq .value`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rf.out.validate(); err != nil {
				return err
			}
			reg, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{rf.registry}})
			if err != nil {
				return err
			}
			dec := &avroDecoder{reg: reg, schemas: map[int]*avro.Schema{}}
			cl, err := rf.reader(args[0])
			if err != nil {
				return err
			}
			defer cl.Close()
			w := cmd.OutOrStdout()
			return rf.each(cmd.Context(), cl, func(r *kgo.Record) (bool, error) {
				c := consumed{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Timestamp: r.Timestamp.UTC()}
				c.Key, _ = dec.decode(cmd.Context(), r.Key)
				c.Value, c.SchemaID = dec.decode(cmd.Context(), r.Value)
				return true, printConsumed(w, rf.out, c)
			})
		},
	}
	rf.register(cmd)
	return cmd
}

func printConsumed(w io.Writer, out outputFlag, c consumed) error {
	if out.json() {
		b, err := json.Marshal(c)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(w, "%s/%d@%d %s key=%s value=%s\n", c.Topic, c.Partition, c.Offset, c.Timestamp.Format(time.RFC3339Nano), c.Key, c.Value)
	return err
}

// avroDecoder decodes Confluent-framed Avro with writer schemas fetched by
// id from the registry, cached.
type avroDecoder struct {
	reg     *schemas.Client
	mu      sync.Mutex
	schemas map[int]*avro.Schema
}

// decode returns b as JSON: Avro JSON when b is Confluent-framed Avro
// whose schema the registry knows, a JSON string otherwise (null for nil).
func (d *avroDecoder) decode(ctx context.Context, b []byte) (json.RawMessage, int) {
	if b == nil {
		return json.RawMessage("null"), 0
	}
	raw := func() json.RawMessage { s, _ := json.Marshal(string(b)); return s }
	if len(b) < schemas.HeaderBytes || b[0] != 0 {
		return raw(), 0
	}
	id := int(binary.BigEndian.Uint32(b[1:5]))
	s, err := d.schema(ctx, id)
	if err != nil {
		return raw(), 0
	}
	var v any
	if _, err := s.Decode(b[schemas.HeaderBytes:], &v); err != nil {
		return raw(), 0
	}
	js, err := s.EncodeJSON(v, avro.TaggedUnions())
	if err != nil {
		return raw(), 0
	}
	return js, id
}

func (d *avroDecoder) schema(ctx context.Context, id int) (*avro.Schema, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.schemas[id]; ok {
		return s, nil
	}
	text, err := d.reg.SchemaText(ctx, id)
	if err != nil {
		return nil, err
	}
	s, err := avro.Parse(text)
	if err != nil {
		return nil, err
	}
	if len(d.schemas) < 256 {
		d.schemas[id] = s
	}
	return s, nil
}

func newDecisionsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "decisions", Short: "Follow the decisions the decisions job writes"}
	cmd.AddCommand(newDecisionsTailCmd())
	return cmd
}

func newDecisionsTailCmd() *cobra.Command {
	var rf readFlags
	var topic, lender, decision string
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print loan decisions as they are made, decoded, optionally filtered",
		Long: `Reads loan_decisions (read_committed, no consumer group) and prints each
decision decoded: application, lender, decision, basis, score, reasons,
amount and the engine's latency. --lender and --decision keep only the
matching ones. With --output json, one JSON object per line (the API's
decision document).`,
		Example: `  loanflow decisions tail
  loanflow decisions tail --lender demo-bank --decision DECLINED --from-beginning
  loanflow decisions tail --output json | jq .engine_latency_ms`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := rf.out.validate(); err != nil {
				return err
			}
			decision = strings.ToUpper(decision)
			ctx := cmd.Context()
			codecs, err := api.NewAvroCodecs(ctx, rf.registry, "loan_applications", topic, "portfolio_metrics")
			if err != nil {
				return err
			}
			cl, err := rf.reader(topic)
			if err != nil {
				return err
			}
			defer cl.Close()
			w := cmd.OutOrStdout()
			if !rf.out.json() {
				fmt.Fprintln(w, "DECIDED AT                APPLICATION                       LENDER        DECISION  BASIS     SCORE  AMOUNT        LATENCY  REASONS")
			}
			return rf.each(ctx, cl, func(r *kgo.Record) (bool, error) {
				d, err := codecs.DecodeDecision(r.Value)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s/%d@%d: not a decision: %v\n", r.Topic, r.Partition, r.Offset, err)
					return false, nil
				}
				if lender != "" && d.LenderID != lender || decision != "" && d.Decision != decision {
					return false, nil
				}
				return true, printDecision(w, rf.out, d)
			})
		},
	}
	rf.register(cmd)
	cmd.Flags().StringVar(&topic, "topic", "loan_decisions", "the decisions topic")
	cmd.Flags().StringVar(&lender, "lender", "", "only this lender's decisions")
	cmd.Flags().StringVar(&decision, "decision", "", "only this decision: APPROVED, DECLINED or REFER")
	return cmd
}

func printDecision(w io.Writer, out outputFlag, d api.Decision) error {
	if out.json() {
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	reasons := strings.Join(d.ReasonCodes, ",")
	_, err := fmt.Fprintf(w, "%-25s %-33s %-13s %-9s %-9s %5d  %-13s %6dms  %s\n", d.DecidedAt.UTC().Format(time.RFC3339Nano), d.ApplicationID,
		d.LenderID, d.Decision, d.Basis, d.Score, d.Amount+" "+d.Currency, d.EngineLatencyMs, orDash(reasons))
	return err
}
