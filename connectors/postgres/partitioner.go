package postgres

import (
	"context"

	"github.com/twmb/franz-go/pkg/kgo"
)

type manualKey struct{}

// manualPartition marks records (heartbeats, truncates) whose Partition is
// chosen by the writer; every other record is partitioned by its key with
// Kafka's murmur2 hash, as the Java client does.
var manualPartition = context.WithValue(context.Background(), manualKey{}, true)

type partitioner struct{ keyed kgo.Partitioner }

func newPartitioner() kgo.Partitioner {
	return partitioner{keyed: kgo.StickyKeyPartitioner(nil)}
}

func (p partitioner) ForTopic(topic string) kgo.TopicPartitioner {
	return topicPartitioner{keyed: p.keyed.ForTopic(topic)}
}

type topicPartitioner struct{ keyed kgo.TopicPartitioner }

func (p topicPartitioner) RequiresConsistency(r *kgo.Record) bool { return true }

func (p topicPartitioner) Partition(r *kgo.Record, n int) int {
	if r.Context == manualPartition {
		if int(r.Partition) < n {
			return int(r.Partition)
		}
		return int(r.Partition) % n
	}
	return p.keyed.Partition(r, n)
}
