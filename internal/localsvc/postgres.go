package localsvc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresOptions configures a local PostgreSQL cluster.
type PostgresOptions struct {
	// Dir holds the cluster: Dir/data is PGDATA, Dir/postgres.log the server
	// log, and the Unix socket lives in Dir. An existing cluster in Dir is
	// reused, so a restart resumes where it stopped.
	Dir string
	// Port on 127.0.0.1; 0 picks a free one.
	Port int
	// OSUser owns the server process when this process runs as root.
	// Default "postgres".
	OSUser string
	// Durable keeps fsync on. Test clusters turn it off for speed.
	Durable bool
	// Settings are extra `-c name=value` server settings.
	Settings map[string]string
	// StartTimeout bounds the wait for the server to accept connections.
	// Default 60s.
	StartTimeout time.Duration
}

// Postgres is a running local PostgreSQL cluster.
type Postgres struct {
	opts PostgresOptions
	bin  string
	proc *proc
}

// PostgresBinDir finds the directory holding initdb and postgres:
// $LOANFLOW_PG_BINDIR, else the newest /usr/lib/postgresql/<v>/bin, else
// the directory of initdb on $PATH.
func PostgresBinDir() (string, error) {
	if d := os.Getenv("LOANFLOW_PG_BINDIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			return "", fmt.Errorf("%w: LOANFLOW_PG_BINDIR=%s has no initdb", ErrNotInstalled, d)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("%w: PostgreSQL server binaries (initdb, postgres) not found; install them with `apt-get install -y postgresql` or set LOANFLOW_PG_BINDIR", ErrNotInstalled)
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// StartPostgres initialises (if needed) and starts a PostgreSQL cluster with
// wal_level=logical and trust authentication on 127.0.0.1.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	bin, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	if opts.OSUser == "" {
		opts.OSUser = "postgres"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	cred, uid, gid, err := unprivileged(opts.OSUser)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating postgres dir: %w", err)
	}
	if uid >= 0 {
		if err := os.Chown(opts.Dir, uid, gid); err != nil {
			return nil, fmt.Errorf("handing %s to %s: %w", opts.Dir, opts.OSUser, err)
		}
	}
	pg := &Postgres{opts: opts, bin: bin}
	if err := pg.initdb(ctx, cred); err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), pg.serverArgs()...)
	logPath := filepath.Join(opts.Dir, "postgres.log")
	if uid >= 0 {
		// The log file is opened by us; make sure the server user could
		// rotate it too.
		f, _ := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY, 0o644)
		if f != nil {
			f.Close()
			_ = os.Chown(logPath, uid, gid)
		}
	}
	awaitPreviousServer(ctx, pg.dataDir(), opts.Dir, opts.StartTimeout)
	if pg.proc, err = startProc("postgres", cmd, logPath, cred); err != nil {
		return nil, err
	}
	if err := waitReady(pg.proc, opts.StartTimeout, func() error { return pg.ping(ctx) }); err != nil {
		pg.Stop()
		return nil, err
	}
	return pg, nil
}

func (pg *Postgres) dataDir() string { return filepath.Join(pg.opts.Dir, "data") }

func (pg *Postgres) initdb(ctx context.Context, cred *syscall.Credential) error {
	if _, err := os.Stat(filepath.Join(pg.dataDir(), "PG_VERSION")); err == nil {
		return nil
	}
	args := []string{"-D", pg.dataDir(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"}
	if !pg.opts.Durable {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(pg.bin, "initdb"), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb in %s: %w\n%s", pg.dataDir(), err, out)
	}
	return nil
}

func (pg *Postgres) serverArgs() []string {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(pg.opts.Port),
		"unix_socket_directories": pg.opts.Dir,
		"wal_level":               "logical",
		"max_replication_slots":   "128",
		"max_wal_senders":         "128",
		"max_connections":         "300",
		"shared_buffers":          "128MB",
		"logging_collector":       "off",
	}
	if !pg.opts.Durable {
		settings["fsync"] = "off"
		settings["synchronous_commit"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range pg.opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := []string{"-D", pg.dataDir()}
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	return args
}

func (pg *Postgres) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// Port is the TCP port the server listens on.
func (pg *Postgres) Port() int { return pg.opts.Port }

// Dir is the cluster's directory.
func (pg *Postgres) Dir() string { return pg.opts.Dir }

// BinDir is the directory of the server binaries in use (pg_recvlogical,
// pgbench and friends live there too).
func (pg *Postgres) BinDir() string { return pg.bin }

// DSN returns a connection URL for database db as the superuser.
func (pg *Postgres) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", pg.opts.Port, db)
}

// CreateDatabase creates database name (if missing) and returns its DSN.
func (pg *Postgres) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("connecting to postgres: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", fmt.Errorf("checking database %s: %w", name, err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			return "", fmt.Errorf("creating database %s: %w", name, err)
		}
	}
	return pg.DSN(name), nil
}

// Stop shuts the server down (fast shutdown) and waits for it.
func (pg *Postgres) Stop() {
	if pg.proc != nil {
		pg.proc.stop(syscall.SIGINT, 30*time.Second)
	}
}

// Kill ends the server abruptly (SIGKILL), as a crash would.
func (pg *Postgres) Kill() {
	if pg.proc != nil {
		pg.proc.stop(syscall.SIGKILL, time.Second)
	}
}

// awaitPreviousServer waits, up to limit, until no process of a previous
// server works in dataDir (backends finishing after their postmaster was
// killed; every PostgreSQL process has the data directory as its working
// directory). If the postmaster named in postmaster.pid is then a zombie
// (killed with the process that started it and not reaped yet: an init
// that reaps slowly, or never), its lock files (postmaster.pid and the
// socket's in socketDir) are stale and are removed. PostgreSQL refuses to
// start beside either ("pre-existing shared memory block is still in use",
// "lock file ... already exists"): a restart right after a SIGKILL of
// `loanflow dev` failed so. A live postmaster is left to PostgreSQL to
// report.
func awaitPreviousServer(ctx context.Context, dataDir, socketDir string, limit time.Duration) {
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	deadline := time.Now().Add(limit)
	for len(processesIn(dataDir)) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	pidFile := filepath.Join(dataDir, "postmaster.pid")
	pid := lockFilePID(pidFile)
	if pid <= 0 || !isZombie(pid) || len(processesIn(dataDir)) > 0 {
		return
	}
	locks, _ := filepath.Glob(filepath.Join(socketDir, ".s.PGSQL.*.lock"))
	for _, l := range append(locks, pidFile) {
		if lockFilePID(l) == pid {
			_ = os.Remove(l)
		}
	}
}

// lockFilePID is the pid on the first line of a PostgreSQL lock file, or 0.
func lockFilePID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	return pid
}

// isZombie reports whether process pid has exited and awaits its reaping.
func isZombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// processesIn lists the processes whose working directory is dir.
func processesIn(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && cwd == dir {
			pids = append(pids, pid)
		}
	}
	return pids
}
