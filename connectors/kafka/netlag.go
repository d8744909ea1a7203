package kafka

import (
	"context"
	"fmt"
	"sort"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// MaxLagScan is how many offsets GroupLag and NetLag read per partition
// by default (`job status`); a larger backlog is reported as its offset
// difference (an upper bound). The API's operator page, which counts
// every job's lag every refresh, reads fewer.
const MaxLagScan = 50_000

// PartitionLag is one input partition's position in a consumer group.
type PartitionLag struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Worker    string `json:"worker,omitempty"`
	Committed int64  `json:"committed"`
	End       int64  `json:"end"`
	// Lag is the number of records still to read, net of transaction
	// markers and aborted records; Exact is false when the backlog was too
	// long to count (Lag is then the offset difference).
	Lag   int64 `json:"lag"`
	Exact bool  `json:"exact"`
}

// GroupLag lists the lag of every partition group consumes or committed,
// net of transaction markers and aborted records (kadm's Lag and
// kafka-consumer-groups count a commit marker as one record of lag: a
// transactional job that is caught up shows lag 1 per partition).
// It reads at most maxScan offsets per partition.
func GroupLag(ctx context.Context, cl *kgo.Client, group string, maxScan int64) ([]PartitionLag, error) {
	adm := kadm.NewClient(cl)
	lags, err := adm.Lag(ctx, group)
	if err != nil {
		return nil, fmt.Errorf("listing the lag of %s: %w", group, err)
	}
	l := lags[group]
	if err := l.Error(); err != nil {
		return nil, fmt.Errorf("listing the lag of %s: %w", group, err)
	}
	var topics []string
	for t := range l.Lag {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	if len(topics) == 0 {
		return nil, nil
	}
	meta, err := adm.Metadata(ctx, topics...)
	if err != nil {
		return nil, fmt.Errorf("describing %v: %w", topics, err)
	}
	lso, err := adm.ListCommittedOffsets(ctx, topics...)
	if err != nil {
		return nil, fmt.Errorf("listing the stable offsets of %v: %w", topics, err)
	}
	var out []PartitionLag
	for _, m := range l.Lag.Sorted() {
		pl := PartitionLag{Topic: m.Topic, Partition: m.Partition, Committed: m.Commit.At, End: m.End.Offset, Exact: true}
		if m.Member != nil {
			pl.Worker = m.Member.ClientID
			if m.Member.InstanceID != nil {
				pl.Worker = *m.Member.InstanceID
			}
		}
		from := m.Commit.At
		if from < 0 {
			from = m.Start.Offset
		}
		end := m.End.Offset
		if o, ok := lso.Lookup(m.Topic, m.Partition); ok && o.Err == nil {
			end = o.Offset
		}
		td := meta.Topics[m.Topic]
		pd := td.Partitions[m.Partition]
		if pl.Lag, pl.Exact, err = NetLag(ctx, cl, pd.Leader, m.Topic, [16]byte(td.ID), m.Partition, from, end, maxScan); err != nil {
			return nil, err
		}
		out = append(out, pl)
	}
	return out, nil
}

// NetLag counts the records a reader of [from, end) would get with
// read_committed: the offset difference minus transaction markers and
// aborted records. exact is false when the range was too long to read
// (the result is then end-from).
func NetLag(ctx context.Context, cl *kgo.Client, leader int32, topic string, id [16]byte, p int32, from, end, maxScan int64) (n int64, exact bool, err error) {
	if end <= from {
		return 0, true, nil
	}
	if end-from > maxScan {
		return end - from, false, nil
	}
	for off := from; off < end; {
		rp, err := fetchRaw(ctx, cl, leader, topic, id, p, off)
		if err != nil {
			return 0, false, err
		}
		fp, next := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{Topic: topic, Partition: p, Offset: off,
			IsolationLevel: kgo.ReadCommitted()}, rp, kgo.DefaultDecompressor(), nil)
		if fp.Err != nil {
			return 0, false, fmt.Errorf("reading %s/%d at %d: %w", topic, p, off, fp.Err)
		}
		for _, r := range fp.Records {
			if r.Offset < end {
				n++
			}
		}
		if next <= off { // nothing readable yet (an open transaction)
			return n + (end - off), false, nil
		}
		off = next
	}
	return n, true, nil
}

func fetchRaw(ctx context.Context, cl *kgo.Client, leader int32, topic string, id [16]byte, p int32, off int64) (*kmsg.FetchResponseTopicPartition, error) {
	req := kmsg.NewPtrFetchRequest()
	req.ReplicaID = -1
	req.MaxWaitMillis = 0
	req.MinBytes = 1
	req.MaxBytes = 4 << 20
	req.IsolationLevel = 1
	req.SessionEpoch = -1
	rt := kmsg.NewFetchRequestTopic()
	rt.Topic, rt.TopicID = topic, id
	rpart := kmsg.NewFetchRequestTopicPartition()
	rpart.Partition, rpart.FetchOffset, rpart.PartitionMaxBytes = p, off, 1<<20
	rpart.CurrentLeaderEpoch, rpart.LogStartOffset = -1, -1
	rt.Partitions = append(rt.Partitions, rpart)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl.Broker(int(leader)))
	if err != nil {
		return nil, fmt.Errorf("fetching %s/%d: %w", topic, p, err)
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return nil, fmt.Errorf("fetching %s/%d: %w", topic, p, err)
	}
	for i := range resp.Topics {
		for j := range resp.Topics[i].Partitions {
			rp := &resp.Topics[i].Partitions[j]
			if rp.Partition == p {
				if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
					return nil, fmt.Errorf("fetching %s/%d: %w", topic, p, err)
				}
				return rp, nil
			}
		}
	}
	return nil, fmt.Errorf("fetching %s/%d: the broker answered without the partition", topic, p)
}
