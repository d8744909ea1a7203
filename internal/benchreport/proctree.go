package benchreport

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on every
// Linux architecture Go supports).
const clockTicks = 100

// procStat is what the CPU accounting needs from /proc/<pid>/stat.
type procStat struct {
	pid, ppid int
	comm      string
	// ticks is utime+stime+cutime+cstime: the process's own CPU and that
	// of its children it has reaped (a PostgreSQL backend that exits is
	// counted in the postmaster's).
	ticks int64
}

// readProcStat parses /proc/<pid>/stat; comm may hold spaces and
// parentheses, so fields are counted after its last ')'.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("parsing /proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(s[end+1:])
	// f[0] is state (field 3); ppid is field 4, utime..cstime 14..17.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("parsing /proc/%d/stat: %d fields", pid, len(f))
	}
	p := procStat{pid: pid, comm: s[open+1 : end]}
	if p.ppid, err = strconv.Atoi(f[1]); err != nil {
		return p, err
	}
	for _, i := range []int{11, 12, 13, 14} {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return p, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
		}
		p.ticks += v
	}
	return p, nil
}

// processTree returns root and its descendants.
func processTree(root int) ([]procStat, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	byParent := map[int][]procStat{}
	var top *procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProcStat(pid)
		if err != nil {
			continue // exited meanwhile
		}
		if pid == root {
			top = &p
		}
		byParent[p.ppid] = append(byParent[p.ppid], p)
	}
	if top == nil {
		return nil, fmt.Errorf("process %d is gone", root)
	}
	out := []procStat{*top}
	for i := 0; i < len(out); i++ {
		out = append(out, byParent[out[i].pid]...)
	}
	return out, nil
}

// cpuGroup names the part of the stack a process of loanflow dev's tree
// belongs to.
func cpuGroup(root int, p procStat) string {
	switch {
	case p.pid == root:
		return groupDev
	case p.comm == "postgres" || strings.HasPrefix(p.comm, "postgres:"):
		return groupPostgres
	case strings.HasPrefix(p.comm, "redis-server"):
		return groupRedis
	case p.ppid == root:
		return groupBroker // the only other child: the re-executed binary
	default:
		return "other (" + p.comm + ")"
	}
}

const (
	groupDev      = "loanflow dev (API, CDC, registry, bureau simulator, 3 jobs)"
	groupBroker   = "embedded broker (child process)"
	groupPostgres = "PostgreSQL (postmaster and every backend)"
	groupRedis    = "redis-server"
)

// cpuTicks sums the CPU ticks of root's tree per group.
func cpuTicks(root int) (map[string]int64, error) {
	procs, err := processTree(root)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, p := range procs {
		out[cpuGroup(root, p)] += p.ticks
	}
	return out, nil
}

// cpuSeconds is after minus before per group, in seconds. A process that
// exited between the two (its parent reaped it) counts its whole life in
// the parent's after and its before here, so the difference is its CPU
// time in between.
func cpuSeconds(before, after map[string]int64) map[string]float64 {
	out := map[string]float64{}
	for g, a := range after {
		out[g] = float64(a-before[g]) / clockTicks
	}
	for g, b := range before {
		if _, ok := after[g]; !ok {
			out[g] = float64(-b) / clockTicks
		}
	}
	return out
}
