package benchreport

import (
	"bufio"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestCPUTicksCountReapedChildren: the CPU of a process tree includes
// children that exited and were reaped (a PostgreSQL backend that ends
// during a step). The expected figure comes from the shell's own `times`
// (getrusage of its children), not from /proc. Negative control: the same
// tree's utime+stime without the reaped children's share misses it.
func TestCPUTicksCountReapedChildren(t *testing.T) {
	// The subshell burns CPU and exits; the shell reaps it, prints its
	// children's times and sleeps until killed.
	cmd := exec.Command("sh", "-c", `(i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done); times; exec sleep 60`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	var lines []string
	for len(lines) < 2 && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) < 2 {
		t.Fatalf("times printed %q", lines)
	}
	children := parseTimes(t, lines[1])
	if children < 200*time.Millisecond {
		t.Fatalf("the subshell used only %s; the check needs more", children)
	}
	ticks, err := cpuTicks(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, v := range ticks {
		total += v
	}
	got := time.Duration(total) * time.Second / clockTicks
	if got < children-20*time.Millisecond {
		t.Errorf("tree CPU %s, but its reaped child alone used %s (sh times)", got, children)
	}
	own, err := readProcStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if withoutChildren := ownTicks(t, cmd.Process.Pid); withoutChildren >= own.ticks {
		t.Errorf("negative control: utime+stime alone (%d ticks) should miss the reaped child (%d ticks with it)", withoutChildren, own.ticks)
	}
}

// parseTimes reads a line of `times`: "0m0.350000s 0m0.010000s".
func parseTimes(t *testing.T, line string) time.Duration {
	t.Helper()
	var sum time.Duration
	for _, f := range strings.Fields(line) {
		var m int
		var s float64
		if _, err := fmt.Sscanf(f, "%dm%fs", &m, &s); err != nil {
			t.Fatalf("times line %q: %v", line, err)
		}
		sum += time.Duration(m)*time.Minute + time.Duration(s*float64(time.Second))
	}
	return sum
}

// ownTicks is utime+stime of pid without its children's.
func ownTicks(t *testing.T, pid int) int64 {
	t.Helper()
	p, err := readProcStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	b, err := exec.Command("cat", fmt.Sprintf("/proc/%d/stat", pid)).Output()
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	var u, st, cu, cs int64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &st)
	fmt.Sscan(f[13], &cu)
	fmt.Sscan(f[14], &cs)
	if u+st+cu+cs != p.ticks {
		t.Fatalf("readProcStat %d ticks, the fields sum to %d", p.ticks, u+st+cu+cs)
	}
	return u + st
}

func TestCPUGroup(t *testing.T) {
	const root = 100
	for _, tc := range []struct {
		p    procStat
		want string
	}{
		{procStat{pid: root, ppid: 1, comm: "loanflow"}, groupDev},
		{procStat{pid: 101, ppid: root, comm: "loanflow"}, groupBroker},
		{procStat{pid: 102, ppid: root, comm: "postgres"}, groupPostgres},
		{procStat{pid: 103, ppid: 102, comm: "postgres"}, groupPostgres},
		{procStat{pid: 104, ppid: root, comm: "redis-server"}, groupRedis},
	} {
		if got := cpuGroup(root, tc.p); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.p, got, tc.want)
		}
	}
	if got := cpuSeconds(map[string]int64{"a": 100, "gone": 50}, map[string]int64{"a": 250}); got["a"] != 1.5 || got["gone"] != -0.5 {
		t.Errorf("cpuSeconds: %v", got)
	}
}
