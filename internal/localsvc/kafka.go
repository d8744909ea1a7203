package localsvc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// KafkaVersion is the Apache Kafka release StartKafka runs; its jars come
// from scripts/kafka/pom.xml through scripts/kafka-jars.sh.
const KafkaVersion = "4.4.0"

// kafkaHint is how to install what the Apache Kafka broker needs.
const kafkaHint = "install a Java 17+ runtime and Maven with `apt-get install -y default-jre-headless maven`"

// errKafkaClosed is returned by Start after Close.
var errKafkaClosed = errors.New("localsvc: kafka cluster closed")

// KafkaOptions configures a local Apache Kafka cluster in KRaft mode.
type KafkaOptions struct {
	// Dir holds the cluster: node i keeps its log segments and metadata log
	// in Dir/node-<i>/data, its config in Dir/node-<i>/server.properties
	// and its log in Dir/node-<i>/server.log. A cluster already formatted
	// in Dir is reused, so a new StartKafka resumes where the last one
	// stopped.
	Dir string
	// Brokers is the number of nodes: 1, or 3 for replication and failover
	// tests. Every node is a broker and a controller. Default 1.
	Brokers int
	// Configs override the broker configs StartKafka chooses, on every
	// node (see the package doc for those).
	Configs map[string]string
	// HeapMB is each node's maximum Java heap. Default 512.
	HeapMB int
	// LibsDir is the directory of the broker's jars. Default
	// $LOANFLOW_KAFKA_LIBS, else the cache KafkaJars fills.
	LibsDir string
	// JVMOpts are extra JVM options, after StartKafka's own (for -XX
	// flags the last one wins: -XX:TieredStopAtLevel=4 brings back the
	// optimising compiler for a throughput run).
	JVMOpts []string
	// StartTimeout bounds the wait for a node to be ready. Default 120s.
	StartTimeout time.Duration
}

func (o *KafkaOptions) setDefaults() {
	if o.Brokers == 0 {
		o.Brokers = 1
	}
	if o.HeapMB == 0 {
		o.HeapMB = 512
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 120 * time.Second
	}
}

// Validate reports options StartKafka cannot run with (after defaults).
func (o KafkaOptions) Validate() error {
	switch {
	case o.Dir == "":
		return errors.New("localsvc: KafkaOptions.Dir is empty")
	case o.Brokers != 0 && o.Brokers != 1 && o.Brokers != 3:
		return fmt.Errorf("localsvc: KafkaOptions.Brokers is %d, want 1 or 3", o.Brokers)
	case o.HeapMB < 0 || (o.HeapMB > 0 && o.HeapMB < 128):
		return fmt.Errorf("localsvc: KafkaOptions.HeapMB is %d, want at least 128", o.HeapMB)
	case o.StartTimeout < 0:
		return fmt.Errorf("localsvc: KafkaOptions.StartTimeout is negative")
	}
	return nil
}

// Kafka is a running local Apache Kafka cluster: one JVM per node, each a
// broker and a KRaft controller. Its methods are safe for concurrent use.
type Kafka struct {
	opts      KafkaOptions
	java      string
	classpath string
	clusterID string
	cds       string       // class-data-sharing archive path; "" when none
	nodes     []*kafkaNode // nodes[i-1] is node i; fixed after start

	mu struct {
		sync.Mutex
		closed bool
	}
}

// kafkaNode is one node. Its address fields are fixed at start, so a
// restarted node keeps its ports; proc and dump are guarded by Kafka.mu.
type kafkaNode struct {
	id       int
	dir      string
	port     int // PLAINTEXT listener, advertised to clients
	ctrlPort int // CONTROLLER listener (the KRaft quorum)
	proc     *proc
	dump     string // CDS archive this run writes at exit; "" when none
}

func (n *kafkaNode) addr() string      { return fmt.Sprintf("127.0.0.1:%d", n.port) }
func (n *kafkaNode) dataDir() string   { return filepath.Join(n.dir, "data") }
func (n *kafkaNode) propsPath() string { return filepath.Join(n.dir, "server.properties") }

// JavaBinary finds the java launcher: $JAVA_HOME/bin/java, else $PATH.
func JavaBinary() (string, error) {
	if h := os.Getenv("JAVA_HOME"); h != "" {
		p := filepath.Join(h, "bin", "java")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("java")
	if err != nil {
		return "", fmt.Errorf("%w: java not found (Apache Kafka %s needs Java 17+); %s", ErrNotInstalled, KafkaVersion, kafkaHint)
	}
	return p, nil
}

// KafkaJars returns the directory of the Apache Kafka jars:
// $LOANFLOW_KAFKA_LIBS, else the cache that scripts/kafka-jars.sh (found by
// walking up from the working directory to go.mod) fills with Maven on first
// use. A missing java or mvn is ErrNotInstalled.
func KafkaJars(ctx context.Context) (string, error) {
	if d := os.Getenv("LOANFLOW_KAFKA_LIBS"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "kafka_2.13-"+KafkaVersion+".jar")); err != nil {
			return "", fmt.Errorf("localsvc: LOANFLOW_KAFKA_LIBS=%s has no kafka_2.13-%s.jar", d, KafkaVersion)
		}
		return d, nil
	}
	if _, err := JavaBinary(); err != nil {
		return "", err
	}
	script, err := repoFile(filepath.Join("scripts", "kafka-jars.sh"))
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		return "", fmt.Errorf("%w: %s", ErrNotInstalled, strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return "", fmt.Errorf("fetching the Kafka jars with %s: %w\n%s", script, err, lastBytes(stderr.Bytes(), 2048))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), nil
}

// repoFile finds rel under the module root: the first directory holding a
// go.mod, walking up from the working directory.
func repoFile(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, rel)
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("localsvc: %s not found in the module at %s", rel, dir)
			}
			return p, nil
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", fmt.Errorf("localsvc: no go.mod above the working directory, so no %s (set LOANFLOW_KAFKA_LIBS)", rel)
		}
		dir = up
	}
}

// StartKafka formats (if needed) and starts a cluster of opts.Brokers
// nodes on free loopback ports, and waits until every node answers metadata
// requests listing all of them.
func StartKafka(ctx context.Context, opts KafkaOptions) (*Kafka, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	k := &Kafka{opts: opts}
	if err := k.prepare(ctx); err != nil {
		return nil, err
	}
	if err := k.format(ctx); err != nil {
		return nil, err
	}
	if err := k.StartAll(); err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

// prepare finds java and the jars, picks ports and writes the configs.
func (k *Kafka) prepare(ctx context.Context) error {
	var err error
	if k.java, err = JavaBinary(); err != nil {
		return err
	}
	libs := k.opts.LibsDir
	if libs == "" {
		if libs, err = KafkaJars(ctx); err != nil {
			return err
		}
	}
	jars, err := filepath.Glob(filepath.Join(libs, "*.jar"))
	if err != nil || len(jars) == 0 {
		return fmt.Errorf("localsvc: no jars in %s (delete it to fetch them again)", libs)
	}
	sort.Strings(jars)
	k.classpath = strings.Join(jars, string(os.PathListSeparator))
	k.cds = cdsArchivePath(k.java, jars)
	if err := os.MkdirAll(k.opts.Dir, 0o755); err != nil {
		return fmt.Errorf("creating kafka dir: %w", err)
	}
	if err := os.WriteFile(k.log4jPath(), []byte(kafkaLog4j2), 0o644); err != nil {
		return fmt.Errorf("writing kafka log config: %w", err)
	}
	if err := k.pickPorts(); err != nil {
		return err
	}
	for _, n := range k.nodes {
		if err := writeProperties(n.propsPath(), k.serverConfigs(n)); err != nil {
			return err
		}
	}
	return nil
}

func (k *Kafka) log4jPath() string { return filepath.Join(k.opts.Dir, "log4j2.properties") }

// kafkaLog4j2 sends the broker's log to stdout, which startProc writes to
// the node's server.log. The config dumps (hundreds of lines at every
// start) are left out; the node's server.properties says the same. Without
// log4j's own shutdown hook the log goes on to the end of a graceful stop.
const kafkaLog4j2 = `status = error
name = loanflow-kafka
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
`

func (k *Kafka) pickPorts() error {
	seen := map[int]bool{}
	free := func() (int, error) {
		for {
			p, err := FreePort()
			if err != nil || !seen[p] {
				seen[p] = true
				return p, err
			}
		}
	}
	for i := 1; i <= k.opts.Brokers; i++ {
		n := &kafkaNode{id: i, dir: filepath.Join(k.opts.Dir, fmt.Sprintf("node-%d", i))}
		var err error
		if n.port, err = free(); err != nil {
			return err
		}
		if n.ctrlPort, err = free(); err != nil {
			return err
		}
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			return fmt.Errorf("creating kafka node dir: %w", err)
		}
		k.nodes = append(k.nodes, n)
	}
	return nil
}

// serverConfigs are node n's broker configs: the listeners and quorum, the
// test-friendly settings of testConfigs, then opts.Configs.
func (k *Kafka) serverConfigs(n *kafkaNode) map[string]string {
	voters := make([]string, len(k.nodes))
	for i, v := range k.nodes {
		voters[i] = fmt.Sprintf("%d@127.0.0.1:%d", v.id, v.ctrlPort)
	}
	c := map[string]string{
		"process.roles":                  "broker,controller",
		"node.id":                        strconv.Itoa(n.id),
		"controller.quorum.voters":       strings.Join(voters, ","),
		"listeners":                      fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d", n.port, n.ctrlPort),
		"advertised.listeners":           "PLAINTEXT://" + n.addr(),
		"controller.listener.names":      "CONTROLLER",
		"inter.broker.listener.name":     "PLAINTEXT",
		"listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
		"log.dirs":                       n.dataDir(),
	}
	for key, v := range testConfigs(len(k.nodes)) {
		c[key] = v
	}
	for key, v := range k.opts.Configs {
		c[key] = v
	}
	return c
}

// testConfigs are the broker settings for tests on a small machine; the
// package doc says why each is there.
func testConfigs(nodes int) map[string]string {
	c := map[string]string{
		"num.partitions":                                              "6",
		"group.initial.rebalance.delay.ms":                            "0",
		"group.min.session.timeout.ms":                                "1000",
		"offsets.topic.num.partitions":                                "10",
		"transaction.state.log.num.partitions":                        "10",
		"share.coordinator.state.topic.num.partitions":                "10",
		"log.segment.bytes":                                           strconv.Itoa(8 << 20),
		"log.roll.ms":                                                 "60000",
		"log.cleaner.backoff.ms":                                      "1000",
		"log.cleaner.max.compaction.lag.ms":                           "5000",
		"log.cleaner.dedupe.buffer.size":                              strconv.Itoa(16 << 20),
		"transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
		"transaction.remove.expired.transaction.cleanup.interval.ms":  "60000",
		"broker.heartbeat.interval.ms":                                "500",
		"broker.session.timeout.ms":                                   "4000",
	}
	if nodes == 1 {
		for _, key := range []string{"offsets.topic.replication.factor", "transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"} {
			c[key] = "1"
		}
		c["transaction.state.log.min.isr"] = "1"
		c["share.coordinator.state.topic.min.isr"] = "1"
		c["min.insync.replicas"] = "1"
		return c
	}
	c["default.replication.factor"] = "3"
	c["min.insync.replicas"] = "2"
	c["offsets.topic.replication.factor"] = "3"
	c["transaction.state.log.replication.factor"] = "3"
	c["transaction.state.log.min.isr"] = "2"
	return c
}

func writeProperties(path string, c map[string]string) error {
	keys := make([]string, 0, len(c))
	for key := range c {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by internal/localsvc (StartKafka) at every start.\n")
	for _, key := range keys {
		fmt.Fprintf(&b, "%s=%s\n", key, c[key])
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// format runs the storage tool on every node whose data directory is not
// formatted yet, in parallel, with one cluster id for the whole cluster
// (the one already on disk, if a node has one).
func (k *Kafka) format(ctx context.Context) error {
	var todo []*kafkaNode
	for _, n := range k.nodes {
		if id := metaClusterID(n.dataDir()); id != "" {
			k.clusterID = id
		} else {
			todo = append(todo, n)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if k.clusterID == "" {
		k.clusterID = newClusterID()
	}
	ctx, cancel := context.WithTimeout(ctx, k.opts.StartTimeout)
	defer cancel()
	errs := make([]error, len(todo))
	var wg sync.WaitGroup
	for i, n := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = k.formatNode(ctx, n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (k *Kafka) formatNode(ctx context.Context, n *kafkaNode) error {
	args := []string{"-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
		"-Dlog4j2.configurationFile=" + k.log4jPath()}
	if k.cds != "" && fileExists(k.cds) {
		args = append(args, "-XX:SharedArchiveFile="+k.cds)
	}
	args = append(args, "-cp", k.classpath, "kafka.tools.StorageTool", "format",
		"--config", n.propsPath(), "--cluster-id", k.clusterID, "--ignore-formatted")
	out, err := exec.CommandContext(ctx, k.java, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("formatting kafka node %d storage: %w\n%s", n.id, err, lastBytes(out, 2048))
	}
	return nil
}

// metaClusterID reads cluster.id from a formatted data directory.
func metaClusterID(dataDir string) string {
	f, err := os.Open(filepath.Join(dataDir, "meta.properties"))
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "cluster.id="); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// newClusterID is a random Kafka Uuid in its base64 form; like Kafka's own,
// it never starts with '-', which the tools would read as a flag.
func newClusterID() string {
	for {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		id := base64.RawURLEncoding.EncodeToString(b)
		if id[0] != '-' {
			return id
		}
	}
}

// jvmArgsLocked are node n's java arguments; it may set n.dump (guarded by
// k.mu), the CDS archive this run writes when it exits.
func (k *Kafka) jvmArgsLocked(n *kafkaNode) []string {
	heap := k.opts.HeapMB
	args := []string{
		fmt.Sprintf("-Xms%dm", min(heap, 128)), fmt.Sprintf("-Xmx%dm", heap),
		// Small machines: one GC thread, no optimising compiler (the
		// broker is ready in half the time), no perf-data file.
		"-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
		"-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
		"-Dlog4j2.configurationFile=" + k.log4jPath(),
	}
	args = append(args, k.cdsArgsLocked(n)...)
	args = append(args, k.opts.JVMOpts...)
	return append(args, "-cp", k.classpath, "kafka.Kafka", n.propsPath())
}

// Addrs are the host:port bootstrap addresses of the live nodes (of all
// nodes when none is running).
func (k *Kafka) Addrs() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var live, all []string
	for _, n := range k.nodes {
		all = append(all, n.addr())
		if n.proc != nil && !n.proc.exited() {
			live = append(live, n.addr())
		}
	}
	if len(live) == 0 {
		return all
	}
	return live
}

// NodeAddr is node i's host:port (node ids are 1..Brokers). It stays the
// same across Kill and Start.
func (k *Kafka) NodeAddr(i int) string { return k.node(i).addr() }

// Nodes is the number of nodes in the cluster.
func (k *Kafka) Nodes() int { return len(k.nodes) }

// ClusterID is the cluster id the nodes were formatted with.
func (k *Kafka) ClusterID() string { return k.clusterID }

func (k *Kafka) node(i int) *kafkaNode {
	if i < 1 || i > len(k.nodes) {
		panic(fmt.Sprintf("localsvc: kafka node %d out of range 1..%d", i, len(k.nodes)))
	}
	return k.nodes[i-1]
}

// PID is the process id of node i's JVM, 0 when it is not running (the
// benchmarks read its CPU time from /proc).
func (k *Kafka) PID(i int) int {
	n := k.node(i)
	k.mu.Lock()
	defer k.mu.Unlock()
	if n.proc == nil || n.proc.cmd.Process == nil {
		return 0
	}
	return n.proc.cmd.Process.Pid
}

// Kill ends node i abruptly (SIGKILL), as a crash would, and waits for it.
func (k *Kafka) Kill(i int) { k.stopNode(k.node(i), syscall.SIGKILL, 10*time.Second) }

// Stop shuts node i down gracefully (SIGTERM; controlled shutdown moves its
// leaderships away first) and waits for it, killing it after 30s.
func (k *Kafka) Stop(i int) { k.stopNode(k.node(i), syscall.SIGTERM, 30*time.Second) }

// KillAll kills every node at once.
func (k *Kafka) KillAll() { k.stopAll(syscall.SIGKILL, 10*time.Second) }

func (k *Kafka) stopNode(n *kafkaNode, sig syscall.Signal, grace time.Duration) {
	k.mu.Lock()
	p := n.proc
	k.mu.Unlock()
	if p == nil {
		return
	}
	p.stop(sig, grace)
	k.mu.Lock()
	k.reapLocked(n)
	k.mu.Unlock()
}

func (k *Kafka) stopAll(sig syscall.Signal, grace time.Duration) {
	var wg sync.WaitGroup
	for _, n := range k.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.stopNode(n, sig, grace)
		}()
	}
	wg.Wait()
}

// Start restarts node i after Kill or Stop, on the same data directory and
// ports, and waits until it serves metadata again. It does nothing to a
// running node. In a 3-node cluster a node alone cannot become ready (the
// controller quorum needs two): after KillAll use StartAll.
func (k *Kafka) Start(i int) error {
	n := k.node(i)
	p, err := k.launch(n)
	if err != nil || p == nil {
		return err
	}
	return k.waitNode(n, p, 1)
}

// StartAll starts every node that is not running and waits until each one
// lists all the brokers of the cluster.
func (k *Kafka) StartAll() error {
	procs := make([]*proc, len(k.nodes))
	for i, n := range k.nodes {
		p, err := k.launch(n)
		if err != nil {
			return err
		}
		procs[i] = p
	}
	for i, n := range k.nodes {
		p := procs[i]
		if p == nil {
			k.mu.Lock()
			p = n.proc
			k.mu.Unlock()
		}
		if err := k.waitNode(n, p, len(k.nodes)); err != nil {
			return err
		}
	}
	return nil
}

// launch starts node n's JVM; it returns a nil proc when n is running.
func (k *Kafka) launch(n *kafkaNode) (*proc, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.mu.closed {
		return nil, errKafkaClosed
	}
	if n.proc != nil && !n.proc.exited() {
		return nil, nil
	}
	k.reapLocked(n)
	cmd := exec.Command(k.java, k.jvmArgsLocked(n)...)
	cmd.Dir = n.dir
	p, err := startProc(fmt.Sprintf("kafka node %d", n.id), cmd, filepath.Join(n.dir, "server.log"), nil)
	if err != nil {
		k.reapLocked(n)
		return nil, err
	}
	n.proc = p
	return p, nil
}

// waitNode waits until node n answers a metadata request that lists itself
// and at least want brokers.
func (k *Kafka) waitNode(n *kafkaNode, p *proc, want int) error {
	return waitReady(p, k.opts.StartTimeout, func() error { return nodeReady(n, want) })
}

func nodeReady(n *kafkaNode, want int) error {
	// A cheap dial first: the broker opens its client listener last.
	conn, err := net.DialTimeout("tcp", n.addr(), time.Second)
	if err != nil {
		return err
	}
	conn.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(n.addr()), kgo.DialTimeout(time.Second), kgo.DisableClientMetrics())
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	m, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		return err
	}
	self := false
	for _, b := range m.Brokers {
		self = self || b.NodeID == int32(n.id)
	}
	if !self || len(m.Brokers) < want {
		return fmt.Errorf("node %d lists brokers %v, want itself and %d in all", n.id, m.Brokers.NodeIDs(), want)
	}
	return nil
}

// Close stops every node (SIGTERM, killing those still running after 20s)
// and waits for them. It is safe to call more than once.
func (k *Kafka) Close() {
	k.mu.Lock()
	k.mu.closed = true
	k.mu.Unlock()
	k.stopAll(syscall.SIGTERM, 20*time.Second)
}

// The JVM spends most of a broker's start loading classes. A dynamic
// class-data-sharing archive of the broker's classes, written by the first
// node that exits cleanly and used by every later JVM, halves that. It
// lives in the cache beside the jars, keyed by the java binary and the
// jars; a stale or unusable archive is ignored by the JVM.

var cdsDumping struct {
	sync.Mutex
	paths map[string]bool // archives a node of this process is writing
}

// cdsArchivePath is the archive for this java and these jars, or "" when
// there is no cache directory.
func cdsArchivePath(java string, jars []string) string {
	dir := kafkaCacheDir()
	if dir == "" {
		return ""
	}
	h := sha256.New()
	resolved, err := filepath.EvalSymlinks(java)
	if err != nil {
		resolved = java
	}
	for _, p := range append([]string{resolved}, jars...) {
		fi, err := os.Stat(p)
		if err != nil {
			return ""
		}
		fmt.Fprintf(h, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
	}
	return filepath.Join(dir, "cds", hex.EncodeToString(h.Sum(nil))[:16]+".jsa")
}

// kafkaCacheDir mirrors scripts/kafka-jars.sh.
func kafkaCacheDir() string {
	base := os.Getenv("LOANFLOW_CACHE_DIR")
	if base == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			return ""
		}
		base = filepath.Join(c, "loanflow")
	}
	return filepath.Join(base, "kafka-"+KafkaVersion)
}

// cdsArgsLocked uses the archive when there is one; otherwise the first
// node of this process to start writes it at exit.
func (k *Kafka) cdsArgsLocked(n *kafkaNode) []string {
	if k.cds == "" {
		return nil
	}
	if fileExists(k.cds) {
		return []string{"-XX:SharedArchiveFile=" + k.cds}
	}
	cdsDumping.Lock()
	defer cdsDumping.Unlock()
	if cdsDumping.paths[k.cds] || os.MkdirAll(filepath.Dir(k.cds), 0o755) != nil {
		return nil
	}
	if cdsDumping.paths == nil {
		cdsDumping.paths = map[string]bool{}
	}
	cdsDumping.paths[k.cds] = true
	n.dump = fmt.Sprintf("%s.%d-%d.tmp", k.cds, os.Getpid(), n.id)
	return []string{"-XX:ArchiveClassesAtExit=" + n.dump}
}

// reapLocked finishes the archive node n's last run wrote: kept when the
// JVM exited by itself (the archive is written at exit), dropped when it
// was killed.
func (k *Kafka) reapLocked(n *kafkaNode) {
	if n.dump == "" || (n.proc != nil && !n.proc.exited()) {
		return
	}
	var ws syscall.WaitStatus
	var exit *exec.ExitError
	if n.proc != nil && errors.As(n.proc.err, &exit) {
		ws, _ = exit.Sys().(syscall.WaitStatus)
	}
	fi, err := os.Stat(n.dump)
	if n.proc != nil && !ws.Signaled() && err == nil && fi.Size() > 0 {
		if os.Rename(n.dump, k.cds) == nil {
			pruneArchives(k.cds)
		}
	} else {
		_ = os.Remove(n.dump)
	}
	cdsDumping.Lock()
	delete(cdsDumping.paths, k.cds)
	cdsDumping.Unlock()
	n.dump = ""
}

// pruneArchives removes the archives of other jars or another java, of no
// more use once keep is there.
func pruneArchives(keep string) {
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(keep), "*.jsa"))
	for _, p := range old {
		if p != keep {
			_ = os.Remove(p)
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}
