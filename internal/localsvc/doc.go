// Package localsvc starts the servers Loanflow needs on one machine: a
// PostgreSQL cluster with wal_level=logical from the installed server
// binaries, a redis-server, an embedded Kafka-protocol broker (franz-go's
// kfake), and a real Apache Kafka cluster for the tests that need the real
// broker's behaviour (replication, failover, transactions across a crash,
// the log cleaner). The local stack (`loanflow dev`) and the
// integration-test harness (internal/testenv) both use it; a user's own
// servers are used instead by configuration alone and never go through this
// package.
//
// # The embedded broker
//
// StartBroker runs kfake in this process: the shared test broker (in
// memory) and tests that want one of their own. StartBrokerProcess runs it
// in a child process, for a broker that persists to a directory and must
// survive the death of the process using it (`loanflow dev`): kfake is not
// crash-atomic. Its EndTxn writes the commit markers partition by
// partition, then the transaction's offset commits, then its producer
// state, as separate file writes; a SIGKILL in between leaves a torn
// transaction on disk (committed in some partitions, unended in the others
// and left blocking read_committed readers, or outputs committed with
// their inputs' offsets not). A clean Close, which runs on kfake's loop
// between requests, is consistent.
//
// The child is this binary re-executed: StartBrokerProcess passes the
// options in an environment variable, and MaybeRunBrokerChild, which main
// (and the TestMain of a test binary that starts broker children, as
// testenv.Main does) calls first, runs the broker and exits. The child:
//
//   - gets SIGTERM when its parent dies (the parent-death signal, set by
//     the OS thread that started it, which stays locked to the goroutine
//     waiting for the child), so a SIGKILL of the parent makes it finish
//     the request it is handling, close cleanly (saving its state) and
//     exit; Stop sends the same SIGTERM;
//   - holds an exclusive flock on its data directory from before loading
//     it until it exits, after the save; a new child on the same directory
//     waits for the lock (its parent's Waiting callback says so), so a
//     quick restart never loads a half-saved directory;
//   - runs in its own process group (a Ctrl-C in the terminal reaches the
//     parent, which stops the broker last) and logs to DataDir + ".log";
//   - reports "ready ADDR" on a pipe; the parent then waits until the
//     broker answers a metadata request there.
//
// Killing the child itself (or the machine) can still tear a transaction:
// TestKfakeTornByDirectKill (opt-in, LOANFLOW_KFAKE_TORN_REPRO=1) shows
// it; TestParentKillKeepsTransactionsWhole shows the parent's death does
// not.
//
// # Apache Kafka
//
// StartKafka runs Apache Kafka (KafkaVersion) in KRaft mode from its jars:
// one JVM per node (1 or 3 nodes), each a broker and a controller on two
// free loopback ports (PLAINTEXT for clients, CONTROLLER for the quorum of
// all nodes, controller.quorum.voters), node ids 1..n, with
// kafka.tools.StorageTool formatting Dir/node-<i>/data once under one
// cluster id. Kill, Stop and Start act on one node and keep its data
// directory and ports; a started node is ready when it answers a metadata
// request listing itself (and, at cluster start, all n brokers).
//
// The jars come from Maven Central through scripts/kafka-jars.sh
// (scripts/kafka/pom.xml), once, into
// ${LOANFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/loanflow}/kafka-<version>/libs;
// KafkaJars finds the script from the working directory, and
// $LOANFLOW_KAFKA_LIBS names a directory of jars to use instead. A JVM that
// exits cleanly leaves a class-data-sharing archive of the broker's classes
// in the same cache (kafka-<version>/cds), which later JVMs map: a node is
// then ready in about half the time.
//
// The JVMs are small (HeapMB, default 512; serial GC; the C1 compiler only,
// for start time) and log at INFO to Dir/node-<i>/server.log. The broker
// configs, which KafkaOptions.Configs override:
//
//   - num.partitions=6; group.initial.rebalance.delay.ms=0 and
//     group.min.session.timeout.ms=1000, for tests with short session
//     timeouts; offsets, transaction-state and share-state topics of 10
//     partitions (not 50: they are created on first use, which is slow on
//     two cores).
//   - One node: the internal topics have replication factor 1 and a
//     min.insync.replicas of 1. Three nodes: default.replication.factor=3,
//     min.insync.replicas=2, offsets.topic.replication.factor=3,
//     transaction.state.log.replication.factor=3,
//     transaction.state.log.min.isr=2.
//   - Compaction that tests can watch: log.cleaner.backoff.ms=1000,
//     log.cleaner.max.compaction.lag.ms=5000 (a compacted topic's active
//     segment rolls, and becomes cleanable, 5s after its first record),
//     log.segment.bytes=8MiB and log.roll.ms=60000 for every topic, and a
//     16MiB dedupe buffer (128MiB by default, allocated at start).
//   - transaction.abort.timed.out.transaction.cleanup.interval.ms=1000, so
//     a crashed producer's transaction is aborted about a second after its
//     timeout; transaction.remove.expired.transaction.cleanup.interval.ms=60000;
//     transaction.max.timeout.ms stays at its default (15 minutes).
//   - broker.heartbeat.interval.ms=500 and broker.session.timeout.ms=4000:
//     a killed node is fenced (its partitions led elsewhere) after 4s, and a
//     restarted one registers again 4s after the kill at the earliest.
//   - auto.create.topics.enable keeps Kafka's default (true): franz-go asks
//     for auto-creation only when a client sets AllowAutoTopicCreation, and
//     Loanflow creates its topics itself.
//
// # Ownership
//
// Each Start function returns a handle that owns the server processes (or
// the in-process broker) and the goroutines waiting on them. Stop (Close
// for Kafka) ends the servers and waits for them; it is safe to call more
// than once. External processes are started with a parent-death signal, so
// a killed parent does not leave orphaned servers behind: SIGKILL for
// PostgreSQL, Redis and Apache Kafka, which recover from a crash by
// themselves, SIGTERM for the broker child, which must save.
//
// # Errors
//
// ErrNotInstalled (wrapped, with an install hint) when a server binary is
// missing (for Apache Kafka: java, or mvn while the jars are not cached
// yet); callers decide whether that is a skip (local tests) or a failure
// (CI, `loanflow dev`). ErrNoBrokerChildHook when StartBrokerProcess runs
// in a broker child: its binary's main does not call MaybeRunBrokerChild
// (the child would otherwise run the binary's own main, tests included).
// Other errors carry the server's log tail.
package localsvc
