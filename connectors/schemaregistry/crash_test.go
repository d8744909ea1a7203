package schemaregistry

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/twmb/franz-go/pkg/sr"
)

// TestRegistryProcess is the registry run as a child process by
// TestCrashLosesNoRegistration; it does nothing in a normal test run.
func TestRegistryProcess(t *testing.T) {
	if os.Getenv("LOANFLOW_REGISTRY_CHILD") != "1" {
		t.Skip("helper process for TestCrashLosesNoRegistration")
	}
	r, err := New(Config{
		Brokers: strings.Split(os.Getenv("LOANFLOW_BROKERS"), ","),
		Listen:  os.Getenv("LOANFLOW_LISTEN"),
		Topic:   os.Getenv("LOANFLOW_TOPIC"),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background()); err != nil { // until SIGKILL
		t.Fatal(err)
	}
}

// TestCrashLosesNoRegistration SIGKILLs a registry process over and over
// while a client registers a sequence of schemas (retrying each until it is
// acknowledged). Afterwards every acknowledged registration is there with
// the id the client was given, no schema got two versions or two ids, and
// no id names two schemas: 0 lost, 0 duplicated.
func TestCrashLosesNoRegistration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	const minKills = 10
	topic, addr := testenv.Name(t, "_schemas"), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	child := startChild(t, topic, addr)
	cl, err := sr.NewClient(sr.URLs("http://"+addr), sr.HTTPClient(&http.Client{Timeout: 5 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	waitUp(t, cl)
	if res := cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatNone}); res[0].Err != nil {
		t.Fatal(res[0].Err)
	}

	// The client registers schema 0, 1, 2, ... retrying each until it is
	// acknowledged, while the test kills and restarts the registry.
	stop := make(chan struct{})
	result := make(chan []int, 1)
	go func() { result <- registerUntil(cl, stop) }()
	for kill := 1; kill <= minKills; kill++ {
		time.Sleep(time.Duration(150+37*kill%120) * time.Millisecond)
		child.Process.Signal(syscall.SIGKILL)
		child.Wait()
		child = startChild(t, topic, addr)
	}
	close(stop)
	acked := <-result
	defer func() { child.Process.Kill(); child.Wait() }()
	if len(acked) < minKills {
		t.Fatalf("only %d registrations acknowledged", len(acked))
	}
	verifyAcked(t, cl, acked)
	t.Logf("%d registrations through %d SIGKILLs: 0 lost, 0 duplicated", len(acked), minKills)
}

// registerUntil registers distinct schemas one after another, each retried
// until acknowledged, until stop is closed; it returns the acknowledged ids.
func registerUntil(cl *sr.Client, stop chan struct{}) []int {
	var acked []int
	for i := 0; ; i++ {
		s := avroSchema(fmt.Sprintf(`{"type":"record","name":"R","fields":[{"name":"f%d","type":"long"}]}`, i))
		for deadline := time.Now().Add(60 * time.Second); ; {
			id, err := cl.RegisterSchema(context.Background(), "crash-value", s, -1, -1)
			if err == nil {
				acked = append(acked, id)
				break
			}
			if time.Now().After(deadline) {
				return acked // the caller finds fewer than it needs
			}
			time.Sleep(20 * time.Millisecond)
		}
		select {
		case <-stop:
			return acked
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func startChild(t *testing.T, topic, addr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRegistryProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LOANFLOW_REGISTRY_CHILD=1", "LOANFLOW_TOPIC="+topic, "LOANFLOW_LISTEN="+addr,
		"LOANFLOW_BROKERS="+strings.Join(testenv.Broker(t).Addrs(), ","))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func waitUp(t *testing.T, cl *sr.Client) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := cl.Subjects(context.Background()); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("registry process not up after 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func verifyAcked(t *testing.T, cl *sr.Client, acked []int) {
	t.Helper()
	waitUp(t, cl)
	ctx := context.Background()
	all, err := cl.Schemas(sr.WithParams(ctx, sr.ShowDeleted), "crash-value")
	if err != nil {
		t.Fatal(err)
	}
	byID := map[int]int{} // id → versions using it
	for _, ss := range all {
		byID[ss.ID]++
	}
	lost, dup := 0, 0
	for i, id := range acked {
		s, err := cl.SchemaByID(ctx, id)
		want := fmt.Sprintf(`"f%d"`, i)
		if err != nil || !strings.Contains(s.Schema, want) {
			lost++
			t.Errorf("schema %d acknowledged as id %d: %v %q", i, id, err, s.Schema)
			continue
		}
		if byID[id] != 1 {
			dup++
			t.Errorf("schema %d (id %d) has %d versions", i, id, byID[id])
		}
	}
	if len(all) != len(acked) || lost+dup > 0 {
		t.Fatalf("%d versions for %d schemas: %d lost, %d duplicated", len(all), len(acked), lost, dup)
	}
}
