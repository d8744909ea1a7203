package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// Topics names the topics the jobs use. The zero value means the names of
// DESIGN.md §4; tests and multi-tenant setups rename them.
type Topics struct {
	// Applications is the LoanApplication topic. Default loan_applications.
	Applications string
	// Customer360 is the compacted Customer360 topic the CDC view writes.
	// Default customer_360.
	Customer360 string
	// Decisions is the LoanDecision topic. Default loan_decisions.
	Decisions string
	// PortfolioMetrics is the PortfolioMetric topic. Default
	// portfolio_metrics.
	PortfolioMetrics string
	// CDCPrefix prefixes the CDC topics: <prefix>.public.<table>. Default
	// cdc.
	CDCPrefix string
}

// WithDefaults returns t with empty names defaulted.
func (t Topics) WithDefaults() Topics {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&t.Applications, "loan_applications")
	def(&t.Customer360, "customer_360")
	def(&t.Decisions, "loan_decisions")
	def(&t.PortfolioMetrics, "portfolio_metrics")
	def(&t.CDCPrefix, "cdc")
	return t
}

// CDC is the change topic of a table in schema public.
func (t Topics) CDC(table string) string { return t.WithDefaults().CDCPrefix + ".public." + table }

// ErrEnv is returned when the Env lacks what a job needs.
var ErrEnv = errors.New("jobs: incomplete environment")

// buildTimeout bounds the registry calls a job makes while building.
const buildTimeout = 30 * time.Second

func (e Env) logger() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.Default()
}

// need reports the Env fields a job needs but lacks, with the fix.
func (e Env) need(job string, fields ...string) error {
	if e.Offline {
		return nil
	}
	var missing []error
	for _, f := range fields {
		var v string
		hint := ""
		switch f {
		case "brokers":
			if len(e.Brokers) > 0 {
				continue
			}
			hint = "--brokers 127.0.0.1:9092"
		case "schema-registry":
			v, hint = e.SchemaRegistryURL, "--schema-registry http://127.0.0.1:8081"
		case "database":
			v, hint = e.DatabaseURL, "--database-url or DATABASE_URL"
		case "redis":
			v, hint = e.RedisURL, "--redis-url or REDIS_URL"
		case "bureau":
			v, hint = e.BureauURL, "--bureau-url http://127.0.0.1:8090 (run `loanflow bureau`)"
		}
		if v == "" {
			missing = append(missing, fmt.Errorf("%w: job %s needs %s (%s)", ErrEnv, job, f, hint))
		}
	}
	return errors.Join(missing...)
}

// registry returns a schema registry client and a context bounding the
// calls made while building.
func (e Env) registry() (*schemas.Client, context.Context, context.CancelFunc, error) {
	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{e.SchemaRegistryURL}})
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	return cl, ctx, cancel, nil
}

// codecs makes a job's Avro codecs: serdes registered with the registry,
// or with Env.Offline placeholders that refuse to run.
type codecs struct {
	offline bool
	cl      *schemas.Client
	ctx     context.Context
}

func (e Env) codecs() (*codecs, context.CancelFunc, error) {
	if e.Offline {
		return &codecs{offline: true}, func() {}, nil
	}
	cl, ctx, cancel, err := e.registry()
	if err != nil {
		return nil, nil, err
	}
	return &codecs{cl: cl, ctx: ctx}, cancel, nil
}

// serde returns the registered serde of a record type on topic.
func serdeOf[T any](c *codecs, topic, schema string) (pipeline.Codec[T], error) {
	if c.offline {
		return offlineCodec[T]{}, nil
	}
	return schemas.NewSerde[T](c.ctx, c.cl, schemas.ValueSubject(topic), schema)
}

// writerDecoder returns a decoder of topic's values by their writer schema.
func writerDecoder(c *codecs, topic string) (pipeline.Codec[map[string]any], error) {
	if c.offline {
		return offlineCodec[map[string]any]{}, nil
	}
	return schemas.NewWriterSchemaDecoder[map[string]any](c.cl, schemas.ValueSubject(topic))
}

// stringKeys returns the Avro string key codec of topic.
func stringKeys(c *codecs, topic string) (AvroStringKeys, error) {
	if c.offline {
		return AvroStringKeysWithID(0), nil
	}
	return NewAvroStringKeys(c.ctx, c.cl, schemas.KeySubject(topic))
}

var errOffline = errors.New("jobs: the job was built offline (Env.Offline) and cannot run")

type offlineCodec[T any] struct{}

func (offlineCodec[T]) Encode(dst []byte, _ T) ([]byte, error) { return dst, errOffline }
func (offlineCodec[T]) Decode([]byte) (T, error) {
	var zero T
	return zero, errOffline
}
