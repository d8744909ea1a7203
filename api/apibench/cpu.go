package apibench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is CPU time consumed so far by this process (the API server
// and the load generator), by the PostgreSQL backends of the benchmark's
// database and by its redis-server. Linux only (/proc); elsewhere the
// PostgreSQL and Redis parts stay zero.
// busy is the CPU time of the whole machine (every process, all CPUs,
// /proc/stat), so that what other processes took during a phase shows.
type cpuSample struct {
	self, pg, redis, busy time.Duration
	at                    time.Time     // when sampled
	wall                  time.Duration // of a difference: time between the samples
}

func (c cpuSample) sub(o cpuSample) cpuSample {
	return cpuSample{self: c.self - o.self, pg: c.pg - o.pg, redis: c.redis - o.redis, busy: c.busy - o.busy, wall: c.at.Sub(o.at)}
}

// machine formats a difference of samples as CPU cores in use: by the
// whole machine, and by processes other than the benchmark's (this
// process, its PostgreSQL backends and its Redis).
func (c cpuSample) machine() string {
	if c.wall <= 0 || c.busy <= 0 {
		return ""
	}
	cores := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds()/c.wall.Seconds(), 'f', 2, 64) }
	return fmt.Sprintf("machine: %s of %d cores busy (Go process %s, PostgreSQL %s, Redis %s, other processes %s)",
		cores(c.busy), runtime.NumCPU(), cores(c.self), cores(c.pg), cores(c.redis), cores(max(0, c.busy-c.self-c.pg-c.redis)))
}

// perRequest formats the CPU cost of n requests.
func (c cpuSample) perRequest(n int) string {
	if n == 0 {
		return ""
	}
	us := func(d time.Duration) string { return strconv.FormatInt(d.Microseconds()/int64(n), 10) }
	return fmt.Sprintf("CPU µs/request: Go process %s, PostgreSQL %s, Redis %s", us(c.self), us(c.pg), us(c.redis))
}

// cpuProbe finds the processes to measure: backends whose title names
// database db, and the redis-server listening on redisPort.
type cpuProbe struct {
	db        string
	redisPort string
	clkTck    float64
}

func (p cpuProbe) sample() cpuSample {
	s := cpuSample{at: time.Now(), busy: p.machineBusy()}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmd, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		cmd = bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})
		switch {
		case p.db != "" && bytes.HasPrefix(cmd, []byte("postgres: ")) && bytes.Contains(cmd, []byte(" "+p.db+" ")):
			s.pg += p.procCPU(d)
		case p.redisPort != "" && bytes.Contains(cmd, []byte("redis-server")) && bytes.Contains(cmd, []byte(":"+p.redisPort+" ")):
			s.redis += p.procCPU(d)
		}
	}
	return s
}

// procCPU is utime+stime of /proc/PID/stat.
func (p cpuProbe) procCPU(dir string) time.Duration {
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')') // the command may contain spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return time.Duration((ut + st) / p.clkTck * float64(time.Second))
}

// machineBusy is the non-idle time of all CPUs from the first line of
// /proc/stat (user nice system idle iowait irq softirq steal ...).
func (p cpuProbe) machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:8] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseFloat(v, 64)
		busy += n
	}
	return time.Duration(busy / p.clkTck * float64(time.Second))
}
