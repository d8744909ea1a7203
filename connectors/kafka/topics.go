package kafka

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// topicSpec is a topic the job needs.
type topicSpec struct {
	name       string
	partitions int32
	configs    map[string]*string
	// exact: an existing topic must have this partition count.
	exact bool
	role  string
}

func strp(s string) *string { return &s }

// ensureTopics resolves the plan's partition counts and creates every
// missing topic (sources, repartitions, changelogs, sinks, dead letters)
// with the right count and configs. It returns the partition count of
// every topic the job touches.
func ensureTopics(ctx context.Context, adm *kadm.Client, plan *pipeline.Plan, cfg Config) (map[string]int32, error) {
	existing, err := topicPartitions(ctx, adm)
	if err != nil {
		return nil, err
	}
	// Sources first: a missing one takes the count of a co-partitioned
	// source that exists, else the default.
	var create []topicSpec
	for _, s := range plan.Subtopologies {
		n := int32(0)
		for _, in := range s.Inputs {
			if c, ok := existing[in.Topic]; ok && !in.Repartition && n == 0 {
				n = c
			}
		}
		if n == 0 {
			n = cfg.DefaultPartitions
		}
		for _, in := range s.Inputs {
			if _, ok := existing[in.Topic]; !ok && !in.Repartition {
				create = append(create, topicSpec{name: in.Topic, partitions: n, role: "source"})
			}
		}
	}
	if err := createTopics(ctx, adm, cfg, create, existing); err != nil {
		return nil, err
	}
	count := func(t string) (int32, bool) { c, ok := existing[t]; return c, ok }
	if err := plan.Resolve(count); err != nil {
		return nil, err
	}
	create = create[:0]
	var check []topicSpec
	for _, s := range plan.Subtopologies {
		for _, in := range s.Inputs {
			if in.Repartition {
				check = append(check, topicSpec{name: in.Topic, partitions: s.Partitions, exact: true, role: "repartition",
					configs: map[string]*string{"retention.ms": strp("-1")}})
			}
		}
		for _, cl := range s.Changelogs {
			check = append(check, topicSpec{name: cl, partitions: s.Partitions, exact: true, role: "changelog",
				configs: map[string]*string{"cleanup.policy": strp("compact")}})
		}
		for _, out := range s.Outputs {
			if plan.RepartitionPartitions(out) == 0 {
				check = append(check, topicSpec{name: out, partitions: cfg.DefaultPartitions, role: "sink"})
			}
		}
	}
	check = append(check, topicSpec{name: pipeline.DeadLetterTopic(plan.Job), partitions: cfg.DefaultPartitions, role: "dead-letter"})
	var errs []error
	for _, t := range check {
		c, ok := existing[t.name]
		switch {
		case !ok:
			create = append(create, t)
		case t.exact && c != t.partitions:
			errs = append(errs, fmt.Errorf("%s topic %q has %d partitions, the job needs %d; delete it (its state is rebuilt) or run the job with matching inputs", t.role, t.name, c, t.partitions))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	create = dedupe(create)
	if err := createTopics(ctx, adm, cfg, create, existing); err != nil {
		return nil, err
	}
	for _, t := range create {
		if c := existing[t.name]; t.exact && c != t.partitions {
			errs = append(errs, fmt.Errorf("%s topic %q has %d partitions, the job needs %d; delete it (its state is rebuilt) or run the job with matching inputs", t.role, t.name, c, t.partitions))
		}
	}
	return existing, errors.Join(errs...)
}

func dedupe(ts []topicSpec) []topicSpec {
	seen := make(map[string]bool)
	out := ts[:0]
	for _, t := range ts {
		if !seen[t.name] {
			seen[t.name] = true
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func topicPartitions(ctx context.Context, adm *kadm.Client) (map[string]int32, error) {
	td, err := adm.ListTopics(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing topics: %w", err)
	}
	out := make(map[string]int32, len(td))
	for name, d := range td {
		if d.Err == nil {
			out[name] = int32(len(d.Partitions))
		}
	}
	return out, nil
}

// createTopics creates the topics and records their partition counts in
// existing. A topic that already exists (created by someone else after
// the worker listed the topics, or not yet in that broker's metadata) keeps
// its own partition count, which the worker then uses: producing by the
// count it meant to create failed every record beyond the real one.
func createTopics(ctx context.Context, adm *kadm.Client, cfg Config, ts []topicSpec, existing map[string]int32) error {
	for _, t := range ts {
		resp, err := adm.CreateTopic(ctx, t.partitions, cfg.ReplicationFactor, t.configs, t.name)
		if err == nil {
			err = resp.Err
		}
		switch {
		case err == nil:
			cfg.Logger.Info("created topic", "topic", t.name, "partitions", t.partitions, "role", t.role)
			existing[t.name] = t.partitions
		case errors.Is(err, kerr.TopicAlreadyExists):
			n, err := existingPartitions(ctx, adm, t.name)
			if err != nil {
				return fmt.Errorf("%s topic %q exists, but: %w", t.role, t.name, err)
			}
			existing[t.name] = n
		default:
			return fmt.Errorf("creating %s topic %q: %w", t.role, t.name, err)
		}
	}
	return nil
}

// existingPartitions is the partition count of a topic that exists,
// waiting for it to appear in the metadata.
func existingPartitions(ctx context.Context, adm *kadm.Client, topic string) (int32, error) {
	deadline := time.Now().Add(topicsVisibleTimeout)
	for {
		td, err := adm.ListTopics(ctx, topic)
		if err == nil {
			if d, ok := td[topic]; ok && d.Err == nil && len(d.Partitions) > 0 {
				return int32(len(d.Partitions)), nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("it did not appear in the metadata within %s", topicsVisibleTimeout)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// topicsVisibleTimeout bounds the wait for created topics to appear in
// every broker's metadata.
const topicsVisibleTimeout = 60 * time.Second

// awaitTopicsVisible waits until every broker's metadata lists each topic
// with its partition count and a leader for every partition. A topic just
// created is known to the controller before the brokers' metadata caches
// have it (Apache Kafka; kfake has one view): a group leader whose
// metadata lacked one of two co-partitioned topics assigned the other
// alone, which fails the worker (assignedTasks).
func awaitTopicsVisible(ctx context.Context, cl *kgo.Client, want map[string]int32) error {
	if len(want) == 0 {
		return nil
	}
	topics := make([]string, 0, len(want))
	for t := range want {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	deadline := time.Now().Add(topicsVisibleTimeout)
	for {
		err := topicsVisible(ctx, cl, topics, want)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for the job's topics to appear in the brokers' metadata: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// topicsVisible asks each broker of the cluster for the topics' metadata.
func topicsVisible(ctx context.Context, cl *kgo.Client, topics []string, want map[string]int32) error {
	bm, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		return err
	}
	req := kmsg.NewPtrMetadataRequest()
	for _, t := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		req.Topics = append(req.Topics, rt)
	}
	req.AllowAutoTopicCreation = false
	var missing []string
	for _, b := range bm.Brokers {
		resp, err := req.RequestWith(ctx, cl.Broker(int(b.NodeID)))
		if err != nil {
			return fmt.Errorf("broker %d: %w", b.NodeID, err)
		}
		ready := make(map[string]bool, len(topics))
		for _, t := range resp.Topics {
			if t.Topic != nil && topicReady(t, want[*t.Topic]) {
				ready[*t.Topic] = true
			}
		}
		for _, t := range topics {
			if !ready[t] {
				missing = append(missing, fmt.Sprintf("%s on broker %d", t, b.NodeID))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("not yet visible with every partition led: %s", strings.Join(missing, ", "))
	}
	return nil
}

func topicReady(t kmsg.MetadataResponseTopic, partitions int32) bool {
	if t.ErrorCode != 0 || int32(len(t.Partitions)) != partitions {
		return false
	}
	for _, p := range t.Partitions {
		if p.ErrorCode != 0 || p.Leader < 0 {
			return false
		}
	}
	return true
}
