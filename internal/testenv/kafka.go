package testenv

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/localsvc"
)

// kafkaStartTimeout bounds a cluster's start, including the one-time Maven
// download of the jars.
const kafkaStartTimeout = 10 * time.Minute

var (
	kafkaOnce sync.Once
	kafkaSrv  *localsvc.Kafka
	kafkaErr  error
)

// Kafka returns the package's shared single-node Apache Kafka broker (a
// real one, unlike Broker's embedded kfake), started on first use and
// stopped when the package's tests end. Tests share it, so they name their
// topics, groups and transactional ids after themselves (see Name).
func Kafka(t testing.TB) *localsvc.Kafka {
	t.Helper()
	kafkaOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), kafkaStartTimeout)
		defer cancel()
		kafkaSrv, kafkaErr = localsvc.StartKafka(ctx, localsvc.KafkaOptions{Dir: Dir(t, "apache-kafka")})
		if kafkaErr == nil {
			atExit(kafkaSrv.Close)
		}
	})
	require(t, "Apache Kafka", kafkaErr)
	return kafkaSrv
}

// NewKafka starts an Apache Kafka cluster for this test alone (one it may
// kill and restart node by node; opts.Brokers = 3 for replication), in a
// scratch directory unless opts.Dir is set. It is stopped when the test
// ends.
func NewKafka(t testing.TB, opts localsvc.KafkaOptions) *localsvc.Kafka {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = Dir(t, "apache-kafka")
	}
	ctx, cancel := context.WithTimeout(context.Background(), kafkaStartTimeout)
	defer cancel()
	k, err := localsvc.StartKafka(ctx, opts)
	require(t, "Apache Kafka", err)
	t.Cleanup(k.Close)
	return k
}
