package benchreport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/loanflow/loanflow/connectors/bureau"
	"github.com/loanflow/loanflow/internal/devstack"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/jobs"
)

// The end-to-end section runs the real `loanflow dev` (this binary, in a
// temporary directory, on free ports) and drives it with `loanflow load`
// in another process, so the load generator's CPU is not counted.

// e2eSettings are the sizes of one run.
type e2eSettings struct {
	restRate, restSecs       float64 // known customers at rest
	unknownRate, unknownSecs float64 // unknown applicants below the bureau's capacity
	steps                    []e2eStep
	bureauLatency            time.Duration
	bureauCapacity           int // requests in flight (the simulator's and, split over tasks, the job's)
	profileSecs              int
	drain                    time.Duration
}

type e2eStep struct {
	rate float64
	secs float64
}

func e2eSizes(quick bool) e2eSettings {
	s := e2eSettings{restRate: 50, restSecs: 30, unknownRate: 50, unknownSecs: 30,
		steps: []e2eStep{{1000, 60}, {3000, 300}}, bureauLatency: 500 * time.Millisecond, bureauCapacity: 60,
		profileSecs: 30, drain: 2 * time.Minute}
	if quick {
		s.restSecs, s.unknownSecs = 4, 4
		s.steps = []e2eStep{{200, 5}, {500, 5}}
		s.profileSecs, s.drain = 3, time.Minute
	}
	return s
}

// devProcess is one `loanflow dev` run.
type devProcess struct {
	bin, dir, log     string
	args              []string
	api, registry     string
	bureau, admin     string
	brokers           []string
	cmd               *exec.Cmd
	exited            chan struct{}
	commitInterval    time.Duration
	minCommitInterval time.Duration // early commits when the decisions job's input runs dry
	heartbeatInterval time.Duration
}

func newDevProcess(bin, dir string) (*devProcess, error) {
	ports := make([]int, 8)
	for i := range ports {
		p, err := localsvc.FreePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	admin, err := freePortRun(3)
	if err != nil {
		return nil, err
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	d := &devProcess{bin: bin, dir: dir, api: "http://" + addr(ports[0]), registry: "http://" + addr(ports[1]),
		bureau: "http://" + addr(ports[2]), admin: addr(admin), brokers: []string{addr(ports[3])},
		commitInterval: jobs.CommitIntervalOf("decisions"), heartbeatInterval: devstack.DefaultHeartbeatInterval,
		minCommitInterval: jobs.MinCommitIntervalOf("decisions", jobs.CommitIntervalOf("decisions"))}
	d.args = []string{"dev", "--dir", dir, "--api-addr", addr(ports[0]), "--registry-addr", addr(ports[1]),
		"--bureau-addr", addr(ports[2]), "--broker-port", strconv.Itoa(ports[3]), "--cdc-metrics-addr", addr(ports[4]),
		"--postgres-port", strconv.Itoa(ports[5]), "--redis-port", strconv.Itoa(ports[6]), "--worker-admin-port", strconv.Itoa(admin),
		"--lender-rate-limit", "100000", "--commit-interval", "decisions=" + d.commitInterval.String(),
		"--heartbeat-interval", d.heartbeatInterval.String(),
		"--bureau-error-rate", "0", "--bureau-timeout-rate", "0", "--bureau-no-file-rate", "0"}
	return d, nil
}

// freePortRun finds n consecutive free ports (the workers' admin ports).
func freePortRun(n int) (int, error) {
	for range 100 {
		base, err := localsvc.FreePort()
		if err != nil {
			return 0, err
		}
		free := true
		for i := 1; i < n && free; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if free = err == nil; free {
				ln.Close()
			}
		}
		if free {
			return base, nil
		}
	}
	return 0, errors.New("no run of free ports")
}

// start runs loanflow dev with extra flags and waits until it is ready.
func (d *devProcess) start(ctx context.Context, extra ...string) error {
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	d.log = filepath.Join(d.dir, fmt.Sprintf("dev-%d.out", time.Now().UnixNano()))
	out, err := os.Create(d.log)
	if err != nil {
		return err
	}
	defer out.Close()
	d.cmd = exec.Command(d.bin, append(slices.Clone(d.args), extra...)...)
	d.cmd.Stdout, d.cmd.Stderr = out, out
	if err := d.cmd.Start(); err != nil {
		return err
	}
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(d.cmd, d.exited)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		b, _ := os.ReadFile(d.log)
		if bytes.Contains(b, []byte("Loanflow is running")) {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("loanflow dev exited while starting: %s", d.logTail())
		case <-ctx.Done():
			d.stop()
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			return fmt.Errorf("loanflow dev not ready after 5m: %s", tail(b))
		}
	}
}

// logTail is the end of loanflow dev's output and of its log file.
func (d *devProcess) logTail() string {
	out, _ := os.ReadFile(d.log)
	logf, _ := os.ReadFile(filepath.Join(d.dir, "loanflow.log"))
	return tail(out) + "\n(loanflow.log) " + tail(logf)
}

func tail(b []byte) string {
	return string(b[max(0, len(b)-2000):])
}

// stop interrupts loanflow dev and waits for it (killing it after 2m).
func (d *devProcess) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-d.exited:
	case <-time.After(2 * time.Minute):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

func (d *devProcess) pid() int { return d.cmd.Process.Pid }

// loadResult is the part of `loanflow load --output json` the report uses.
type loadResult struct {
	Seconds      float64                 `json:"seconds"`
	Rate         float64                 `json:"rate"`
	DecisionRate float64                 `json:"decision_rate"`
	Submitted    int                     `json:"submitted"`
	Accepted     int                     `json:"accepted"`
	Rejected     int                     `json:"rejected"`
	RejectedBy   map[string]int          `json:"rejected_by"`
	Decided      int                     `json:"decided"`
	Missing      int                     `json:"missing"`
	Duplicated   int                     `json:"duplicated"`
	LatencyMs    map[string]latencyStats `json:"latency_ms"`
	// StagesMs: answered (submission to 202), decided (to decided_at),
	// visible (decided_at to the read).
	StagesMs map[string]latencyStats `json:"stages_ms"`
}

type latencyStats struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// load runs `loanflow load` against d for secs seconds at rate.
func (d *devProcess) load(ctx context.Context, progress io.Writer, rate, secs, known float64, terminals int, drain time.Duration) (loadResult, error) {
	args := []string{"load", "--api", d.api, "--credentials", filepath.Join(d.dir, "admin-client.json"),
		"--brokers", strings.Join(d.brokers, ","), "--schema-registry", d.registry, "--lender-prefix", "e2e-bank",
		"--rate", strconv.FormatFloat(rate, 'f', -1, 64), "--duration", time.Duration(secs * float64(time.Second)).String(),
		"--known-ratio", strconv.FormatFloat(known, 'f', -1, 64), "--lenders", "4", "--customers", "100",
		"--terminals", strconv.Itoa(terminals), "--drain", drain.String(), "--output", "json"}
	cmd := exec.CommandContext(ctx, d.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, io.MultiWriter(&stderr, progress)
	err := cmd.Run()
	select {
	case <-d.exited:
		return loadResult{}, fmt.Errorf("loanflow dev exited during the load: %s", d.logTail())
	default:
	}
	var r loadResult
	if jerr := json.Unmarshal(stdout.Bytes(), &r); jerr != nil {
		return r, fmt.Errorf("loanflow load: %v: %s", errors.Join(err, jerr), tail(stderr.Bytes()))
	}
	// Exit status 1 means lost or duplicated decisions: reported, not fatal.
	return r, nil
}

// bureauFloor measures the bureau simulator alone: n calls from conc
// clients, their latencies sorted.
func bureauFloor(ctx context.Context, url string, n, conc int) ([]time.Duration, error) {
	cl, err := bureau.NewClient(bureau.ClientConfig{URL: url})
	if err != nil {
		return nil, err
	}
	lat := make([]time.Duration, n)
	errs := make(chan error, conc)
	next := make(chan int)
	for range conc {
		go func() {
			for i := range next {
				start := time.Now()
				_, err := cl.CreditReport(ctx, bureau.Request{ApplicationID: fmt.Sprintf("floor-%d", i), SSNIndex: floorIndex(i)})
				if err != nil {
					errs <- err
					for range next {
					}
					return
				}
				lat[i] = time.Since(start)
			}
			errs <- nil
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	for range conc {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	slices.Sort(lat)
	return lat, err
}

// floorIndex is a made-up SSN blind index (32 bytes) for call i.
func floorIndex(i int) []byte {
	h := sha256.Sum256([]byte("bench-floor-" + strconv.Itoa(i)))
	return h[:]
}

// pct is the q quantile of sorted (nearest rank).
func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// profile fetches a CPU profile of loanflow dev from a worker's admin
// listener into path.
func (d *devProcess) profile(ctx context.Context, secs int, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", d.admin, secs), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile: %s: %s", resp.Status, b)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// pprofTop is `go tool pprof -top` of a profile, or "" without a go tool.
func pprofTop(ctx context.Context, bin, path string, n int) string {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return ""
	}
	out, err := exec.CommandContext(ctx, goTool, "tool", "pprof", "-top", "-nodecount="+strconv.Itoa(n), bin, path).Output()
	if err != nil {
		return ""
	}
	return string(out)
}
