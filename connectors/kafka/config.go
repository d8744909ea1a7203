package kafka

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Delivery is a job's delivery guarantee.
type Delivery string

const (
	// ExactlyOnce commits outputs, state changelogs and input offsets in
	// one Kafka transaction per checkpoint (the default).
	ExactlyOnce Delivery = "exactly-once"
	// AtLeastOnce flushes outputs and then commits offsets, without
	// transactions: lower latency, duplicates after a crash.
	AtLeastOnce Delivery = "at-least-once"
)

// Config configures a worker: one process running some of a job's tasks.
// Every worker of a job uses the same JobID; the consumer group spreads the
// tasks over them.
type Config struct {
	// Brokers are the seed brokers.
	Brokers []string
	// JobID names the job's consumer group (loanflow-<JobID>) and prefixes
	// its transactional ids; default the job's name.
	JobID string
	// WorkerID identifies this worker across restarts; its transactional
	// id is derived from it, so a restarted worker fences its previous
	// incarnation at once. Default: host name plus a hash of StateDir.
	WorkerID string
	// StateDir holds the worker's local Pebble state, one directory per
	// task. Required.
	StateDir string
	// Delivery is ExactlyOnce (default) or AtLeastOnce.
	Delivery Delivery
	// CommitInterval is the time between checkpoints. Default 200ms.
	CommitInterval time.Duration
	// MinCommitInterval, when set, lets the worker checkpoint earlier: as
	// soon as its tasks have produced output and have no input queued, once
	// MinCommitInterval has passed since the last checkpoint. Output is
	// visible to read_committed readers only once its transaction commits,
	// so with sparse input it then waits about MinCommitInterval instead of
	// up to CommitInterval; under load the tasks rarely run dry and
	// checkpoints keep coming every CommitInterval, batching as before.
	// 0 (default): every CommitInterval only.
	MinCommitInterval time.Duration
	// TransactionTimeout bounds how long a crashed worker's open
	// transaction can hold back readers. Default 10s.
	TransactionTimeout time.Duration
	// SessionTimeout and RebalanceTimeout of the consumer group. Defaults
	// 10s and 30s.
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration
	// QueueRecords bounds each task's input queue, in records (default
	// 16,384). A checkpoint's barrier waits behind the queue, so the queue
	// bounds how long a transaction stays open: counted in fetched batches
	// (up to 1 MiB each), a queue could hold seconds of work per task on a
	// loaded machine and outlast the transaction timeout.
	QueueRecords int
	// FireSlice bounds the keys one watermark releases in one go (the
	// temporal join's waiting probes); the rest follow in later slices, a
	// barrier passing between them (default 1,024). See
	// pipeline.TaskConfig.FireSlice.
	FireSlice int
	// TickInterval is how often tasks advance processing time (timers,
	// idleness, metrics). Default 100ms.
	TickInterval time.Duration
	// DefaultPartitions is the partition count of topics the worker creates
	// without anything else deciding it (sinks, dead letters, missing
	// sources). Default 6.
	DefaultPartitions int32
	// ReplicationFactor of created topics; -1 for the broker default.
	ReplicationFactor int16
	// RestoreWait bounds the wait for a crashed owner's open transaction
	// on a changelog to end before restoring. Default 3 × TransactionTimeout.
	RestoreWait time.Duration
	// KeepHangingTransactions leaves hanging transactions (open on a
	// changelog, ended by their coordinator without a marker there; see
	// docs/design.md) to the operator instead of closing them the way the
	// coordinator's log says they ended: a restore then fails after
	// RestoreWait with the `kafka-transactions.sh abort` command.
	KeepHangingTransactions bool
	// PurgeInterval is how often consumed repartition records are deleted.
	// Default 30s.
	PurgeInterval time.Duration
	// MaxCachedEntries bounds each task's state write cache (0 = default).
	MaxCachedEntries int
	// ExpireBudget is how many committed state entries each task's TTL
	// sweep examines per tick (0 = state.DefaultSweepBudget).
	ExpireBudget int
	// SweepInterval is the least time between the starts of two TTL sweep
	// passes over a task's state: an entry is deleted at most about this
	// long (plus one pass) after its TTL passed. Default 10s; -1 sweeps
	// continuously, one pass after the other. A pass visits every entry,
	// so sweeping continuously costs CPU in proportion to the state (15%
	// of loanflow dev's CPU at 1,000 applications/s, where the decisions
	// job's state holds a day of application ids).
	SweepInterval time.Duration
	// AdminAddr is where this worker's admin endpoint (AdminHandler) is
	// reached (host:port). The worker advertises it to its consumer group
	// (in its client id, see MemberAdminAddr), so `loanflow job status` and
	// `loanflow job stop` find a job's workers from the group alone.
	AdminAddr string
	// SummaryInterval is how often the worker logs a summary line (records
	// in and out per second, lag, checkpoints and their age) and warns when
	// something degrades (a stale checkpoint, full input queues, a growing
	// lag). Default 1m; -1 disables it.
	SummaryInterval time.Duration
	// FromSavepoint starts the job from a savepoint directory written by
	// StopWithSavepoint (see savepoint.go for what that does).
	FromSavepoint string
	// Registerer receives the engine's Prometheus metrics; nil leaves them
	// unregistered.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// ClientOpts are extra franz-go options (TLS, SASL) for every client.
	ClientOpts []kgo.Opt
}

func (c Config) withDefaults(job string) Config {
	if c.JobID == "" {
		c.JobID = job
	}
	if c.Delivery == "" {
		c.Delivery = ExactlyOnce
	}
	if c.CommitInterval <= 0 {
		c.CommitInterval = 200 * time.Millisecond
	}
	if c.TransactionTimeout <= 0 {
		c.TransactionTimeout = 10 * time.Second
	}
	if c.SessionTimeout <= 0 {
		c.SessionTimeout = 10 * time.Second
	}
	if c.RebalanceTimeout <= 0 {
		c.RebalanceTimeout = 30 * time.Second
	}
	if c.FireSlice <= 0 {
		c.FireSlice = 1024
	}
	if c.QueueRecords <= 0 {
		c.QueueRecords = 16384
	}
	if c.TickInterval <= 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.DefaultPartitions <= 0 {
		c.DefaultPartitions = 6
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = -1
	}
	if c.RestoreWait <= 0 {
		c.RestoreWait = 3 * c.TransactionTimeout
	}
	if c.SummaryInterval == 0 {
		c.SummaryInterval = time.Minute
	}
	if c.PurgeInterval <= 0 {
		c.PurgeInterval = 30 * time.Second
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.WorkerID == "" {
		c.WorkerID = defaultWorkerID(c.StateDir)
	}
	return c
}

func defaultWorkerID(stateDir string) string {
	host, _ := os.Hostname()
	abs, _ := filepath.Abs(stateDir)
	sum := sha256.Sum256([]byte(abs))
	return sanitize(host) + "-" + hex.EncodeToString(sum[:4])
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '-'
	}, s)
}

// Validate reports what is wrong with the configuration, with the fix.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("kafka: Config.Brokers is empty; give the seed brokers (host:port)"))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("kafka: Config.StateDir is required; give a directory for local state"))
	}
	switch c.Delivery {
	case "", ExactlyOnce, AtLeastOnce:
	default:
		errs = append(errs, fmt.Errorf("kafka: Config.Delivery %q is not %q or %q", c.Delivery, ExactlyOnce, AtLeastOnce))
	}
	if ci := cmp.Or(max(c.CommitInterval, 0), 200*time.Millisecond); c.MinCommitInterval < 0 || c.MinCommitInterval > ci {
		errs = append(errs, fmt.Errorf("kafka: Config.MinCommitInterval %s must be between 0 and the commit interval %s", c.MinCommitInterval, ci))
	}
	if c.CommitInterval < 0 || c.TransactionTimeout < 0 {
		errs = append(errs, errors.New("kafka: durations must not be negative"))
	}
	return errors.Join(errs...)
}

// adminTag separates a worker's client id from its advertised admin
// address.
const adminTag = ";admin="

// ClientID is the Kafka client id of a worker of job jobID whose admin
// endpoint is at adminAddr (none when empty).
func ClientID(jobID, adminAddr string) string {
	id := "loanflow-" + jobID
	if adminAddr != "" {
		id += adminTag + adminAddr
	}
	return id
}

// MemberAdminAddr is the admin address a worker advertised in its client
// id (see ClientID); ok is false for a member that advertised none.
func MemberAdminAddr(clientID string) (addr string, ok bool) {
	_, addr, ok = strings.Cut(clientID, adminTag)
	return addr, ok && addr != ""
}

// Group is the consumer group of a job.
func Group(jobID string) string { return "loanflow-" + jobID }
