package localsvc

import (
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// BrokerOptions configures the embedded Kafka-protocol broker.
type BrokerOptions struct {
	// Port on 127.0.0.1; 0 picks a free one.
	Port int
	// DataDir persists topics, offsets and transactions so a restart
	// resumes; empty keeps everything in memory.
	DataDir string
	// CompactionInterval is how often compacted topics are cleaned
	// (log.cleaner.backoff.ms). Zero, the default, never compacts: kfake
	// cleans past the last stable offset, so a record of a transaction
	// that is still open (and may abort) removes the committed record it
	// would supersede, and each pass re-reads every compacted partition on
	// the broker's only goroutine. See docs/design.md, "The embedded
	// broker". Set it only for a test of compaction itself.
	CompactionInterval time.Duration
	// Retention is the default retention of delete-policy topics
	// (log.retention.ms). Default 7 days.
	Retention time.Duration
	// DefaultPartitions for topics created without a count. Default 6.
	DefaultPartitions int
	// Configs are extra broker configs.
	Configs map[string]string
}

// neverCompact is a compaction interval no process lives to see: kfake
// starts its cleaner ticker whenever a compacted topic exists.
const neverCompact = 100 * 365 * 24 * time.Hour

// Broker is an embedded kfake cluster with one broker listening on TCP.
type Broker struct {
	Cluster *kfake.Cluster
}

// StartBroker starts the embedded broker in this process. With a DataDir,
// a SIGKILL of this process can tear the transaction being committed;
// StartBrokerProcess runs it where that cannot happen.
func StartBroker(opts BrokerOptions) (*Broker, error) { return startBroker(opts) }

func startBroker(opts BrokerOptions, extra ...kfake.Opt) (*Broker, error) {
	if opts.CompactionInterval <= 0 {
		opts.CompactionInterval = neverCompact
	}
	if opts.Retention == 0 {
		opts.Retention = 7 * 24 * time.Hour
	}
	if opts.DefaultPartitions == 0 {
		opts.DefaultPartitions = 6
	}
	configs := map[string]string{
		"log.cleaner.backoff.ms": strconv.FormatInt(opts.CompactionInterval.Milliseconds(), 10),
		"log.retention.ms":       strconv.FormatInt(opts.Retention.Milliseconds(), 10),
	}
	for k, v := range opts.Configs {
		configs[k] = v
	}
	kopts := []kfake.Opt{
		kfake.Ports(opts.Port),
		kfake.DefaultNumPartitions(opts.DefaultPartitions),
		kfake.BrokerConfigs(configs),
		kfake.GroupMinSessionTimeout(time.Second),
	}
	if opts.DataDir != "" {
		kopts = append(kopts, kfake.DataDir(opts.DataDir))
	}
	c, err := kfake.NewCluster(append(kopts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("starting embedded broker: %w", err)
	}
	return &Broker{Cluster: c}, nil
}

// Addrs are the broker's host:port seed addresses.
func (b *Broker) Addrs() []string { return b.Cluster.ListenAddrs() }

// Stop shuts the broker down; with a DataDir its state is flushed to disk.
func (b *Broker) Stop() { b.Cluster.Close() }
