package jobs

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loanflow/loanflow/pipeline"
)

// Env is what a job needs from its surroundings; the CLI fills it from
// flags and environment, the local stack from the servers it started.
type Env struct {
	Brokers           []string
	SchemaRegistryURL string
	RedisURL          string
	DatabaseURL       string
	// BureauURL is the credit bureau's base URL (the simulator locally).
	BureauURL string
	Logger    *slog.Logger
	// Topics renames the topics the jobs read and write; zero fields keep
	// the names of DESIGN.md §4 (see Topics).
	Topics Topics
	// Registerer receives the jobs' own metrics (portfolio gauges); nil
	// leaves them unregistered.
	Registerer prometheus.Registerer
	// Offline builds a job's graph without contacting any server and
	// without checking the fields above (`loanflow job describe`): its
	// codecs refuse to run, so such a graph can be planned, not run.
	Offline bool
	// Decisions tunes the decisions job; the zero value keeps its
	// defaults. Not serialised (it holds a clock function).
	Decisions DecisionsConfig `json:"-"`
}

// Job is a registered Loanflow job.
type Job struct {
	// Name is the job's name: its consumer group, topic prefix and CLI name.
	Name string
	// Summary is one line for `loanflow job list`.
	Summary string
	// Build declares the job's graph.
	Build func(b *pipeline.Builder, env Env) error
	// AdminPort is the job's worker admin port wherever Loanflow assigns
	// one (loanflow job run's default, loanflow dev, docker-compose):
	// one port map everywhere. 0 for jobs without one (tests).
	AdminPort int
	// CommitInterval is the job's checkpoint interval unless the operator
	// chooses one (loanflow job run --commit-interval, loanflow dev
	// --commit-interval). 0: DefaultCommitInterval. A record is visible to
	// read_committed readers only once its transaction commits, so a job
	// whose output someone waits for (decisions) commits more often.
	CommitInterval time.Duration
	// MinCommitInterval lets the job's workers commit early when their
	// input runs dry (kafka.Config.MinCommitInterval): a decision then
	// waits for its commit about this long at low rates. 0: never early.
	MinCommitInterval time.Duration
}

// DefaultCommitInterval is the checkpoint interval of a job that names
// none.
const DefaultCommitInterval = 200 * time.Millisecond

// CommitIntervalOf is the checkpoint interval of the registered job name
// (DefaultCommitInterval for a job that names none or is not registered).
func CommitIntervalOf(name string) time.Duration {
	if j, ok := Get(name); ok && j.CommitInterval > 0 {
		return j.CommitInterval
	}
	return DefaultCommitInterval
}

// MinCommitIntervalOf is the registered job's MinCommitInterval, never
// more than commitInterval (the interval the job runs with).
func MinCommitIntervalOf(name string, commitInterval time.Duration) time.Duration {
	if j, ok := Get(name); ok {
		return min(j.MinCommitInterval, commitInterval)
	}
	return 0
}

// FirstAdminPort is the lowest port of the admin port map: decisions 9100,
// cache-invalidation 9101, portfolio 9102.
const FirstAdminPort = 9100

var (
	mu       sync.Mutex
	registry = map[string]Job{}
)

// Register adds a job; registering a name twice is a programming error.
func Register(j Job) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[j.Name]; dup {
		panic(fmt.Sprintf("jobs: job %q registered twice", j.Name))
	}
	registry[j.Name] = j
}

// Get returns the job named name.
func Get(name string) (Job, bool) {
	mu.Lock()
	defer mu.Unlock()
	j, ok := registry[name]
	return j, ok
}

// List returns every registered job, by name.
func List() []Job {
	mu.Lock()
	defer mu.Unlock()
	out := make([]Job, 0, len(registry))
	for _, j := range registry {
		out = append(out, j)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Name < out[k].Name })
	return out
}

// Builder builds job name's graph for env.
func Builder(name string, env Env) (*pipeline.Builder, error) {
	j, ok := Get(name)
	if !ok {
		var names []string
		for _, j := range List() {
			names = append(names, j.Name)
		}
		return nil, fmt.Errorf("no job named %q; known jobs: %v (see `loanflow job list`)", name, names)
	}
	b := pipeline.NewBuilder(j.Name)
	if err := j.Build(b, env); err != nil {
		return nil, fmt.Errorf("building job %s: %w", name, err)
	}
	return b, nil
}
