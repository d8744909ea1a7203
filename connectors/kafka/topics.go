package kafka

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
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
				existing[in.Topic] = n
			}
		}
	}
	if err := createTopics(ctx, adm, cfg, create); err != nil {
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
			existing[t.name] = t.partitions
		case t.exact && c != t.partitions:
			errs = append(errs, fmt.Errorf("%s topic %q has %d partitions, the job needs %d; delete it (its state is rebuilt) or run the job with matching inputs", t.role, t.name, c, t.partitions))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return existing, createTopics(ctx, adm, cfg, dedupe(create))
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

func createTopics(ctx context.Context, adm *kadm.Client, cfg Config, ts []topicSpec) error {
	for _, t := range ts {
		resp, err := adm.CreateTopic(ctx, t.partitions, cfg.ReplicationFactor, t.configs, t.name)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("creating %s topic %q: %w", t.role, t.name, err)
		}
		cfg.Logger.Info("created topic", "topic", t.name, "partitions", t.partitions, "role", t.role)
	}
	return nil
}
