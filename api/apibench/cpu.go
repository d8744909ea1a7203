package apibench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is CPU time consumed so far by this process (the API server
// and the load generator), by the PostgreSQL backends of the benchmark's
// database and by its redis-server. Linux only (/proc); elsewhere the
// PostgreSQL and Redis parts stay zero.
type cpuSample struct{ self, pg, redis time.Duration }

func (c cpuSample) sub(o cpuSample) cpuSample {
	return cpuSample{c.self - o.self, c.pg - o.pg, c.redis - o.redis}
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
	var s cpuSample
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
