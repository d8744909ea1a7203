package peerbench

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func createTopics(ctx context.Context, brokers []string, parts int32, topics ...string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	resp, err := adm.CreateTopics(ctx, parts, -1, map[string]*string{"retention.ms": ptr("-1")}, topics...)
	if err != nil {
		return err
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil {
			return fmt.Errorf("creating %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}

func ptr(s string) *string { return &s }

// producer writes the inputs: records by key hash (the Java clients' murmur2
// partitioner, so every side sees every key in one partition) and, with
// toPartition, to a chosen partition.
type producer struct {
	cl   *kgo.Client
	mu   sync.Mutex
	err  error
	sent int
}

func newProducer(brokers []string) (*producer, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond),
		kgo.RecordPartitioner(manualOrHash{}), kgo.MaxBufferedRecords(100_000))
	if err != nil {
		return nil, err
	}
	return &producer{cl: cl}, nil
}

type manualOrHash struct{}

func (manualOrHash) ForTopic(t string) kgo.TopicPartitioner {
	return manualOr{kgo.StickyKeyPartitioner(nil).ForTopic(t)}
}

// manualOr sends a record with a negative Partition by key hash, and one
// with Partition >= 0 there.
type manualOr struct{ hash kgo.TopicPartitioner }

func (m manualOr) RequiresConsistency(*kgo.Record) bool { return true }
func (m manualOr) Partition(r *kgo.Record, n int) int {
	if r.Partition >= 0 {
		return int(r.Partition)
	}
	return m.hash.Partition(r, n)
}

func (p *producer) send(ctx context.Context, topic string, part int32, key, value []byte, ts int64) {
	p.cl.Produce(ctx, &kgo.Record{Topic: topic, Partition: part, Key: key, Value: value, Timestamp: time.UnixMilli(ts)}, func(_ *kgo.Record, err error) {
		if err != nil {
			p.mu.Lock()
			if p.err == nil {
				p.err = err
			}
			p.mu.Unlock()
		}
	})
}

func (p *producer) flush(ctx context.Context) error {
	if err := p.cl.Flush(ctx); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *producer) close() { p.cl.Close() }

// output is what a watcher saw on an output topic.
type output struct {
	records int
	sum     int64
	first   time.Time
	last    time.Time
	bad     int // values that were not a number
	// tracked counts the records whose key is the watched key.
	tracked int
}

// watch reads topic from the start with read_committed isolation, skipping
// control records (keys starting with "~": flush and end markers), adding
// each other record's number (the value, or its last space-separated field) to
// sum, until done says the output is complete or timeout passes. ready is
// closed once the consumer is set up.
func watch(ctx context.Context, brokers []string, topic, track string, done func(o output) bool, timeout time.Duration, ready chan<- struct{}) (output, error) {
	var o output
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(50*time.Millisecond))
	if err != nil {
		close(ready)
		return o, err
	}
	defer cl.Close()
	close(ready)
	deadline := time.Now().Add(timeout)
	for !done(o) {
		if time.Now().After(deadline) {
			return o, fmt.Errorf("%s: %d records (sum %d) after %s", topic, o.records, o.sum, timeout)
		}
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		fs := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return o, ctx.Err()
		}
		now := time.Now()
		fs.EachRecord(func(r *kgo.Record) {
			if len(r.Key) > 0 && r.Key[0] == '~' {
				return
			}
			if o.records == 0 {
				o.first = now
			}
			if track != "" && string(r.Key) == track {
				o.tracked++
			}
			o.records++
			o.last = now
			v := string(r.Value)
			if i := strings.LastIndexByte(v, ' '); i >= 0 {
				v = v[i+1:]
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				o.bad++
				return
			}
			o.sum += n
		})
	}
	return o, nil
}
