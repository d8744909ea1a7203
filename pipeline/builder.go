package pipeline

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Job is a dataflow job: Build declares its graph on the builder.
type Job interface {
	Build(b *Builder) error
}

// JobFunc adapts a function to Job.
type JobFunc func(b *Builder) error

// Build calls f(b).
func (f JobFunc) Build(b *Builder) error { return f(b) }

// Builder collects a job's typed graph and validates it. Operators are added
// through the functions of this package and of package operators; errors
// are collected and reported together by Validate, each naming the
// operator that is wrong.
type Builder struct {
	job   string
	nodes []*node
	names map[string]*node
	errs  []error
}

// NewBuilder starts the graph of job. The job name prefixes its internal
// topics (<job>-<operator>-changelog, <job>-<operator>-repartition) and its
// dead-letter topic dlq.<job>.
func NewBuilder(job string) *Builder {
	b := &Builder{job: job, names: make(map[string]*node)}
	if err := validName(job); err != nil {
		b.errorf("job %q: %v", job, err)
	}
	return b
}

// Job is the job's name.
func (b *Builder) Job() string { return b.job }

func (b *Builder) errorf(format string, args ...any) {
	b.errs = append(b.errs, fmt.Errorf(format, args...))
}

// AddError records a configuration error found by an operator
// constructor; Validate reports it.
func (b *Builder) AddError(err error) { b.errs = append(b.errs, err) }

func validName(s string) error {
	if s == "" {
		return errors.New("name is empty")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("name may only hold letters, digits, '-', '_' and '.', not %q", r)
		}
	}
	return nil
}

// nodeKind classifies nodes for planning.
type nodeKind int

const (
	kindSource nodeKind = iota
	kindOperator
	kindKeyBy
	kindSink
)

// node is one operator of the graph. Its typed parts (output port, factory)
// are closures created by the generic functions that add it.
type node struct {
	b      *Builder
	id     int
	name   string
	what   string // operator type shown in errors and plans, e.g. "map"
	kind   nodeKind
	inputs []*node

	// out is the typed output port (*port[T]); nil for sinks.
	out         outPort
	optionalOut bool
	sides       map[string]*sideDecl

	// make creates the node's instance for one task.
	make func(tb *taskBuild) (instance, error)

	stateful bool // writes a changelog
	source   *sourceInfo
	keyBy    *keyByInfo
	sink     *sinkInfo

	sub int // subtopology, set by Plan
}

type sideDecl struct {
	port    outPort
	used    bool
	dropped bool
}

type outPort interface {
	used() bool
}

// instance is a node instantiated in a task.
type instance interface {
	// input returns the collector (Collector[In_i]) for input i.
	input(i int) any
	close() error
}

func (b *Builder) add(name, what string, kind nodeKind, inputs ...*node) *node {
	n := &node{b: b, id: len(b.nodes), name: name, what: what, kind: kind, inputs: inputs}
	if err := validName(name); err != nil {
		b.errorf("%s %q: %v", what, name, err)
	}
	if prev, ok := b.names[name]; ok {
		b.errorf("%s %q: the name is already used by a %s; operator names must be unique", what, name, prev.what)
	}
	for _, in := range inputs {
		if in.b != b {
			b.errorf("%s %q: its input %q belongs to another job's builder", what, name, in.name)
		}
	}
	b.names[name] = n
	b.nodes = append(b.nodes, n)
	return n
}

// Validate reports every problem of the graph at once: duplicate or
// invalid names, unconsumed outputs and side outputs, missing codecs,
// unpartitionable joins. Nil means the job can run.
func (b *Builder) Validate() error {
	errs := append([]error(nil), b.errs...)
	if len(b.nodes) == 0 {
		errs = append(errs, fmt.Errorf("job %q has no operators", b.job))
	}
	hasSource := false
	for _, n := range b.nodes {
		if n.kind == kindSource {
			hasSource = true
		}
		if n.out != nil && !n.out.used() && n.kind != kindSink && !n.optionalOut {
			errs = append(errs, fmt.Errorf("%s %q: its output is not consumed; send it to a sink or pipeline.Discard it", n.what, n.name))
		}
		for _, tag := range sortedTags(n.sides) {
			d := n.sides[tag]
			if !d.used && !d.dropped {
				errs = append(errs, fmt.Errorf("%s %q: side output %q is not consumed; read it with pipeline.Side or drop it with pipeline.DropSide", n.what, n.name, tag))
			}
		}
	}
	if len(b.nodes) > 0 && !hasSource {
		errs = append(errs, fmt.Errorf("job %q has no source", b.job))
	}
	return errors.Join(errs...)
}

func sortedTags(m map[string]*sideDecl) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TopicName turns an operator name into the part of a topic name.
func TopicName(s string) string {
	return strings.ToLower(s)
}

// ChangelogTopic is the compacted changelog topic of a stateful operator.
func ChangelogTopic(job, operator string) string {
	return job + "-" + TopicName(operator) + "-changelog"
}

// RepartitionTopic is the topic a re-keying operator writes through.
func RepartitionTopic(job, operator string) string {
	return job + "-" + TopicName(operator) + "-repartition"
}

// DeadLetterTopic is the job's dead-letter topic.
func DeadLetterTopic(job string) string { return "dlq." + job }
