package main

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// maxScan bounds how many offsets netLag reads per partition; a larger
// backlog is reported as its offset difference (an upper bound).
const maxScan = 50_000

// netLag counts the records a reader of [from, end) would get with
// read_committed: the offset difference minus transaction markers and
// aborted records. exact is false when the range was too long to read
// (the result is then end-from).
func netLag(ctx context.Context, cl *kgo.Client, leader int32, topic string, id [16]byte, p int32, from, end int64) (n int64, exact bool, err error) {
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
