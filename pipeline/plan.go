package pipeline

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Plan is a validated job split into subtopologies: the parts of the graph
// connected without a repartition. Each subtopology runs as one task per
// partition of its (co-partitioned) input topics.
type Plan struct {
	Job           string
	Subtopologies []*Subtopology
	nodes         []*node
}

// Subtopology is one independently partitioned part of a job.
type Subtopology struct {
	ID int
	// Inputs are the topics the subtopology's tasks read, one partition
	// each per task.
	Inputs []TopicInput
	// Outputs are the topics its sinks and repartitions write.
	Outputs []string
	// Changelogs are the changelog topics of its stateful operators.
	Changelogs []string
	// TableSources are source topics that also serve as the changelog of
	// a versioned table built from them: on restore the runtime replays
	// them from the offset local state reflects up to the committed one.
	TableSources []string
	// Partitions is the task count, known after Resolve.
	Partitions int32

	roots []*node
	nodes []*node
}

// TopicInput is a topic a subtopology reads.
type TopicInput struct {
	Topic       string
	Source      string // operator name
	Repartition bool
}

// Plan validates the graph and splits it into subtopologies.
func (b *Builder) Plan() (*Plan, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	parent := make([]int, len(b.nodes))
	for i := range parent {
		parent[i] = i
	}
	var find func(int) int
	find = func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	union := func(a, c int) { parent[find(a)] = find(c) }
	consumers := make(map[int][]*node)
	for _, n := range b.nodes {
		for _, in := range n.inputs {
			if in.kind == kindKeyBy && in.keyBy.repartition {
				consumers[in.id] = append(consumers[in.id], n)
				continue
			}
			union(n.id, in.id)
		}
	}
	for _, cs := range consumers {
		for _, c := range cs[1:] {
			union(cs[0].id, c.id)
		}
	}
	p := &Plan{Job: b.job, nodes: b.nodes}
	subOf := make(map[int]*Subtopology)
	sub := func(n *node) *Subtopology {
		r := find(n.id)
		s, ok := subOf[r]
		if !ok {
			s = &Subtopology{ID: len(p.Subtopologies)}
			subOf[r] = s
			p.Subtopologies = append(p.Subtopologies, s)
		}
		return s
	}
	for _, n := range b.nodes {
		s := sub(n)
		n.sub = s.ID
		s.nodes = append(s.nodes, n)
		switch {
		case n.kind == kindSource:
			s.roots = append(s.roots, n)
			if n.source.topic != "" {
				s.Inputs = append(s.Inputs, TopicInput{Topic: n.source.topic, Source: n.name})
			}
			s.Changelogs = append(s.Changelogs, ChangelogTopic(b.job, n.name))
		case n.kind == kindSink && n.sink.topic != "":
			s.Outputs = append(s.Outputs, n.sink.topic)
		case n.kind == kindKeyBy && n.keyBy.repartition:
			n.keyBy.upSub = s.ID
			s.Outputs = append(s.Outputs, n.keyBy.topic)
		case n.stateful:
			s.Changelogs = append(s.Changelogs, ChangelogTopic(b.job, n.name))
		}
	}
	for id, cs := range consumers {
		n := b.nodes[id]
		down := sub(cs[0])
		n.keyBy.downSub = down.ID
		down.roots = append(down.roots, n)
		down.Inputs = append(down.Inputs, TopicInput{Topic: n.keyBy.topic, Source: n.name, Repartition: true})
		down.Changelogs = append(down.Changelogs, ChangelogTopic(b.job, n.name))
	}
	for _, n := range b.nodes {
		for i := range n.inputs {
			if topic, ok := p.tableSource(n, i); ok {
				s := p.Subtopologies[n.sub]
				s.TableSources = append(s.TableSources, topic)
			}
		}
	}
	for _, s := range p.Subtopologies {
		sort.Slice(s.roots, func(i, j int) bool { return s.roots[i].id < s.roots[j].id })
		if err := checkTopics(s); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// pureOps are the operator types that keep no state and emit only what
// their input gives them, so replaying a source through them is harmless.
var pureOps = map[string]bool{"map": true, "filter": true, "flatMap": true}

// tableSource reports whether input i of n is fed by a source topic
// through a chain of pure operators that feeds nothing else, so that n's
// state built from that input can be restored by replaying the topic.
func (p *Plan) tableSource(n *node, i int) (string, bool) {
	if i >= len(n.inputs) || n.what != "temporalJoin" || i != 1 {
		return "", false
	}
	consumers := func(x *node) int {
		c := 0
		for _, m := range p.nodes {
			for _, in := range m.inputs {
				if in == x {
					c++
				}
			}
		}
		return c
	}
	for up := n.inputs[i]; ; up = up.inputs[0] {
		if consumers(up) != 1 {
			return "", false
		}
		switch {
		case up.kind == kindSource:
			return up.source.topic, up.source.topic != ""
		case up.kind == kindKeyBy && !up.keyBy.repartition:
		case up.kind == kindOperator && !up.stateful && pureOps[up.what] && len(up.inputs) == 1 && len(up.sides) == 0:
		default:
			return "", false
		}
	}
}

func checkTopics(s *Subtopology) error {
	seen := make(map[string]string)
	for _, in := range s.Inputs {
		if other, ok := seen[in.Topic]; ok {
			return fmt.Errorf("operators %q and %q both read topic %q; read it once and share the stream", other, in.Source, in.Topic)
		}
		seen[in.Topic] = in.Source
	}
	return nil
}

// localRoots are the sources of the whole job, run fused in one task.
func (p *Plan) localRoots() []*node {
	var out []*node
	for _, n := range p.nodes {
		if n.kind == kindSource {
			out = append(out, n)
		}
	}
	return out
}

// Topics lists every topic the job reads or writes, internal ones included.
func (p *Plan) Topics() []string {
	set := make(map[string]bool)
	for _, s := range p.Subtopologies {
		for _, in := range s.Inputs {
			set[in.Topic] = true
		}
		for _, t := range s.Outputs {
			set[t] = true
		}
		for _, t := range s.Changelogs {
			set[t] = true
		}
	}
	set[DeadLetterTopic(p.Job)] = true
	out := make([]string, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Resolve fixes every subtopology's task count from the partition counts
// of its source topics (count returns a topic's partitions, or false when
// it does not exist) and sizes the repartition topics. Co-partitioned
// inputs with different counts are an error that names them.
func (p *Plan) Resolve(count func(topic string) (int32, bool)) error {
	for _, s := range p.Subtopologies {
		s.Partitions = 0
		var first string
		for _, in := range s.Inputs {
			if in.Repartition {
				continue
			}
			n, ok := count(in.Topic)
			if !ok {
				return fmt.Errorf("job %s: source topic %q (operator %q) does not exist; create it or check the name", p.Job, in.Topic, in.Source)
			}
			if s.Partitions == 0 {
				s.Partitions, first = n, in.Topic
			} else if n != s.Partitions {
				return fmt.Errorf("job %s: topics %q (%d partitions) and %q (%d partitions) feed the same tasks and must be co-partitioned; give them the same partition count or re-key one side with KeyBy", p.Job, first, s.Partitions, in.Topic, n)
			}
		}
	}
	// Repartition-only subtopologies take their size from an existing
	// repartition topic, the KeyBy option, or their upstream: iterate until
	// every size is known (the subtopology graph is acyclic).
	for range p.Subtopologies {
		for _, n := range p.nodes {
			if n.kind != kindKeyBy || !n.keyBy.repartition {
				continue
			}
			up, down := p.Subtopologies[n.keyBy.upSub], p.Subtopologies[n.keyBy.downSub]
			if down.Partitions == 0 {
				if c, ok := count(n.keyBy.topic); ok {
					down.Partitions = c
				} else if n.keyBy.partitions > 0 {
					down.Partitions = n.keyBy.partitions
				} else if up.Partitions > 0 {
					down.Partitions = up.Partitions
				}
			}
			n.keyBy.downParts, n.keyBy.upParts = down.Partitions, up.Partitions
		}
	}
	var errs []error
	for _, s := range p.Subtopologies {
		if s.Partitions <= 0 {
			errs = append(errs, fmt.Errorf("job %s: subtopology %d has no partition count (a source without a topic?)", p.Job, s.ID))
		}
	}
	for _, n := range p.nodes {
		if n.kind == kindKeyBy && n.keyBy.repartition {
			if c, ok := count(n.keyBy.topic); ok && c != n.keyBy.downParts {
				errs = append(errs, fmt.Errorf("job %s: repartition topic %q has %d partitions, its readers need %d; delete it or align the counts", p.Job, n.keyBy.topic, c, n.keyBy.downParts))
			}
		}
	}
	return errors.Join(errs...)
}

// RepartitionPartitions returns the partition count of a repartition topic
// of the plan, after Resolve.
func (p *Plan) RepartitionPartitions(topic string) int32 {
	for _, n := range p.nodes {
		if n.kind == kindKeyBy && n.keyBy.repartition && n.keyBy.topic == topic {
			return n.keyBy.downParts
		}
	}
	return 0
}

// Describe prints the plan for humans: subtopologies, their operators and
// topics.
func (p *Plan) Describe() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "job %s\n", p.Job)
	for _, s := range p.Subtopologies {
		fmt.Fprintf(&sb, "  subtopology %d (%d tasks)\n", s.ID, s.Partitions)
		for _, in := range s.Inputs {
			fmt.Fprintf(&sb, "    reads  %s\n", in.Topic)
		}
		for _, n := range s.nodes {
			if n.kind == kindKeyBy && n.keyBy.repartition && n.keyBy.upSub != s.ID {
				continue
			}
			ins := make([]string, len(n.inputs))
			for i, in := range n.inputs {
				ins[i] = in.name
			}
			fmt.Fprintf(&sb, "    %-12s %-24s <- %s\n", n.what, n.name, strings.Join(ins, ", "))
		}
		for _, t := range s.Outputs {
			fmt.Fprintf(&sb, "    writes %s\n", t)
		}
		for _, t := range s.Changelogs {
			fmt.Fprintf(&sb, "    state  %s\n", t)
		}
	}
	return sb.String()
}
