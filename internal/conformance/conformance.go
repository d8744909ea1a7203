package conformance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// EndHeader marks the record that ends a partition for the checker.
const EndHeader = "conformance.end"

// Result is check.js's output: per topic the records read, the keys and
// values decoded, tombstones and null keys; and the failures.
type Result struct {
	Topics     map[string]TopicResult `json:"topics"`
	Partitions map[string]struct {
		First, Last string
		Records     int
	} `json:"partitions"`
	Ends     map[string]string `json:"ends"` // topic/partition → offset of the end marker
	Failures []string          `json:"failures"`
}

// TopicResult counts one topic's records.
type TopicResult struct {
	Records, Keys, Values, Tombstones, NullKeys int
}

// nodeDir is the Node.js project beside this file.
func nodeDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "node")
}

// Available reports whether node and npm are installed (see Checker for
// what a test does without them).
func Available() bool {
	_, errNode := exec.LookPath("node")
	_, errNpm := exec.LookPath("npm")
	return errNode == nil && errNpm == nil
}

// Checker installs the consumer's npm packages (npm ci, the versions of
// its package-lock.json) into a cache directory outside the repository,
// once per version of its files, and returns node and that directory.
func Checker(t testing.TB) (node, dir string) {
	t.Helper()
	node, errNode := exec.LookPath("node")
	npm, errNpm := exec.LookPath("npm")
	if errNode != nil || errNpm != nil {
		const hint = "the conformance test needs Node.js 18+ and npm: run `make deps` as root, or apt-get install -y nodejs npm"
		if os.Getenv("CI") == "true" {
			t.Fatal(hint)
		}
		t.Skip(hint)
	}
	h := sha256.New()
	contents := map[string][]byte{}
	for _, f := range []string{"package.json", "package-lock.json", "check.js"} {
		b, err := os.ReadFile(filepath.Join(nodeDir(), f))
		if err != nil {
			t.Fatal(err)
		}
		contents[f] = b
		h.Write(b)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(base, "loanflow", "conformance-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json")); err == nil {
		return node, dir
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "conformance-tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	for f, b := range contents {
		if err := os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", tmp, err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr != nil { // not installed meanwhile by another run
			t.Fatal(err)
		}
	}
	return node, dir
}

// WriteEndMarkers writes a record with EndHeader to every partition of
// topics (plain bytes: the checker does not decode it).
func WriteEndMarkers(t testing.TB, brokers []string, topics ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	md, err := kadm.NewClient(cl).ListTopics(ctx, topics...)
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range topics {
		d, ok := md[topic]
		if !ok || d.Err != nil {
			t.Fatalf("topic %s: %v", topic, d.Err)
		}
		for p := range d.Partitions {
			r := &kgo.Record{Topic: topic, Partition: p, Key: []byte("__conformance_end"), Headers: []kgo.RecordHeader{{Key: EndHeader}}}
			if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Run runs the checker over topics, each partition ending at its first
// record with header endHeader; it returns the result and the exit code
// (0 all decoded, 1 failures, 2 an error) with the checker's stderr.
func Run(t testing.TB, node, dir string, brokers []string, registryURL, endHeader string, topics ...string) (Result, int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	args := append([]string{filepath.Join(dir, "check.js"), strings.Join(brokers, ","), registryURL}, topics...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CONFORMANCE_END_HEADER="+endHeader)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running check.js: %v", err)
	}
	var res Result
	if code != 2 {
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
			t.Fatalf("check.js output %q (stderr %s): %v", stdout.String(), stderr.String(), err)
		}
	}
	return res, code, stderr.String()
}
