package localsvc

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RedisOptions configures a local redis-server.
type RedisOptions struct {
	// Dir is the server's working directory (append-only file, log).
	Dir string
	// Port on 127.0.0.1; 0 picks a free one.
	Port int
	// Durable turns on the append-only file, so a restart keeps the data.
	Durable bool
	// StartTimeout bounds the wait for PING to answer. Default 20s.
	StartTimeout time.Duration
}

// Redis is a running redis-server.
type Redis struct {
	opts RedisOptions
	proc *proc
}

// RedisBinary finds redis-server: $LOANFLOW_REDIS_SERVER, else $PATH.
func RedisBinary() (string, error) {
	if p := os.Getenv("LOANFLOW_REDIS_SERVER"); p != "" {
		return p, nil
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("%w: redis-server not found; install it with `apt-get install -y redis-server` or set LOANFLOW_REDIS_SERVER", ErrNotInstalled)
	}
	return p, nil
}

// StartRedis starts redis-server on 127.0.0.1.
func StartRedis(ctx context.Context, opts RedisOptions) (*Redis, error) {
	bin, err := RedisBinary()
	if err != nil {
		return nil, err
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 20 * time.Second
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating redis dir: %w", err)
	}
	r := &Redis{opts: opts}
	if err := r.start(ctx, bin); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Redis) start(ctx context.Context, bin string) error {
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(r.opts.Port),
		"--dir", r.opts.Dir,
		"--save", "",
		"--daemonize", "no",
		"--protected-mode", "yes",
	}
	if r.opts.Durable {
		args = append(args, "--appendonly", "yes", "--appendfsync", "everysec")
	} else {
		args = append(args, "--appendonly", "no")
	}
	p, err := startProc("redis-server", exec.Command(bin, args...), filepath.Join(r.opts.Dir, "redis.log"), nil)
	if err != nil {
		return err
	}
	r.proc = p
	if err := waitReady(p, r.opts.StartTimeout, r.ping); err != nil {
		r.Stop()
		return err
	}
	return nil
}

// ping speaks RESP by hand so that a server still starting does not make a
// client library log connection errors.
func (r *Redis) ping() error {
	conn, err := net.DialTimeout("tcp", r.Addr(), time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf[:n]), "+PONG") {
		return fmt.Errorf("redis answered %q", buf[:n])
	}
	return nil
}

// Addr is host:port of the server.
func (r *Redis) Addr() string { return fmt.Sprintf("127.0.0.1:%d", r.opts.Port) }

// URL is a redis:// URL of the server.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Stop ends the server and waits for it.
func (r *Redis) Stop() {
	if r.proc != nil {
		r.proc.stop(syscall.SIGTERM, 10*time.Second)
	}
}

// Restart starts the server again on the same port after Stop, as an
// operator bringing a failed cache back would.
func (r *Redis) Restart(ctx context.Context) error {
	r.Stop()
	bin, err := RedisBinary()
	if err != nil {
		return err
	}
	return r.start(ctx, bin)
}
