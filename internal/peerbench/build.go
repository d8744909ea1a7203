package peerbench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/loanflow/loanflow/internal/localsvc"
)

// Peer is one of the Java peer programs under bench/peers.
type Peer struct {
	// Name is the folder under bench/peers: kstreams, flink, debezium.
	Name string
	// Main is the main class.
	Main string
	// Version is what the figures are labelled with.
	Version string
}

// The peers.
var (
	KStreams = Peer{Name: "kstreams", Main: "loanflow.peers.KStreamsPeer", Version: "Kafka Streams 4.4.0"}
	Flink    = Peer{Name: "flink", Main: "loanflow.peers.FlinkPeer", Version: "Flink 2.3.0 (flink-connector-kafka 5.0.0-2.2)"}
	Debezium = Peer{Name: "debezium", Main: "loanflow.peers.DebeziumPeer", Version: "Debezium 3.6.1.Final embedded (pgoutput)"}
)

// Built is a compiled peer, ready to start.
type Built struct {
	Peer
	java      string
	classpath string
	// JVMOpts come before the class path.
	JVMOpts []string
}

// Build compiles the peer under root/bench/peers/NAME with Maven and copies
// its runtime dependencies into its target/lib.
func Build(ctx context.Context, root string, p Peer) (*Built, error) {
	java, err := localsvc.JavaBinary()
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("mvn"); err != nil {
		return nil, fmt.Errorf("mvn not found: the peers are Maven projects; install it with `apt-get install -y maven` (or run `make deps`)")
	}
	dir := filepath.Join(root, "bench", "peers", p.Name)
	if _, err := os.Stat(filepath.Join(dir, "pom.xml")); err != nil {
		return nil, fmt.Errorf("peer %s: %w", p.Name, err)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "mvn", "-B", "-q", "-Dstyle.color=never", "-f", filepath.Join(dir, "pom.xml"),
		"compile", "dependency:copy-dependencies")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building peer %s with Maven: %w\n%s", p.Name, err, tail(out.Bytes(), 4000))
	}
	lib := filepath.Join(dir, "target", "lib")
	jars, err := filepath.Glob(filepath.Join(lib, "*.jar"))
	if err != nil || len(jars) == 0 {
		return nil, fmt.Errorf("peer %s: Maven left no jars in %s", p.Name, lib)
	}
	cp := append([]string{filepath.Join(dir, "target", "classes")}, jars...)
	return &Built{Peer: p, java: java, classpath: strings.Join(cp, string(os.PathListSeparator)),
		// $LOANFLOW_PEER_JVM_OPTS come last (a log level, a profiler).
		JVMOpts: append([]string{"-Xms512m", "-Xmx2g", "-XX:+UseG1GC", "-XX:-UsePerfData", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"},
			strings.Fields(os.Getenv("LOANFLOW_PEER_JVM_OPTS"))...)}, nil
}

// Command is the command that runs workload with the key=value arguments.
func (b *Built) Command(workload string, args map[string]string) *exec.Cmd {
	argv := append(append([]string{}, b.JVMOpts...), "-cp", b.classpath, b.Main, workload)
	for _, k := range sortedKeys(args) {
		argv = append(argv, k+"="+args[k])
	}
	return exec.Command(b.java, argv...)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// FindRoot finds the repository root (the directory holding go.mod and
// bench/peers) walking up from the working directory.
func FindRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "bench", "peers")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				return dir, nil
			}
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", fmt.Errorf("no bench/peers above the working directory: run `loanflow bench --peers` from the repository")
		}
		dir = up
	}
}
