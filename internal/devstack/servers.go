package devstack

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/loanflow/loanflow/internal/localsvc"
)

// startServers starts PostgreSQL, Redis and the broker in the data
// directory, except those the configuration points elsewhere.
func (s *stack) startServers(ctx context.Context) error {
	if s.cfg.DatabaseURL != "" {
		s.info.DatabaseURL = s.cfg.DatabaseURL
	} else if err := s.startPostgres(ctx); err != nil {
		return err
	}
	if s.cfg.RedisURL != "" {
		s.info.RedisURL = s.cfg.RedisURL
	} else {
		r, err := localsvc.StartRedis(ctx, localsvc.RedisOptions{Dir: s.sub("redis"), Port: s.cfg.RedisPort, Durable: true})
		if err != nil {
			return fmt.Errorf("dev: redis: %w (another port: --redis-port; your own Redis: --redis-url)", err)
		}
		s.servers = append(s.servers, r.Stop)
		s.info.RedisURL = r.URL()
		s.info.Started = append(s.info.Started, "redis-server "+r.Addr())
	}
	if len(s.cfg.Brokers) > 0 {
		s.info.Brokers = s.cfg.Brokers
		return nil
	}
	return s.startBroker(ctx)
}

// startBroker starts the embedded broker in a child process that closes
// cleanly (saving its state) when this process dies, however it dies: a
// broker in this process would tear the transaction it was committing
// when the process is killed (docs/design.md, "The embedded broker").
func (s *stack) startBroker(ctx context.Context) error {
	opts := localsvc.BrokerOptions{Port: s.cfg.BrokerPort, DataDir: s.sub("broker"), DefaultPartitions: s.cfg.Partitions}
	if s.cfg.BrokerInProcess {
		b, err := localsvc.StartBroker(opts)
		if err != nil {
			return fmt.Errorf("dev: broker: %w (another port: --broker-port; your own Kafka: --brokers)", err)
		}
		s.servers = append(s.servers, b.Stop)
		s.info.Brokers = b.Addrs()
		s.info.Started = append(s.info.Started, "Kafka-protocol broker (kfake, in process) "+b.Addrs()[0])
		return nil
	}
	b, err := localsvc.StartBrokerProcess(ctx, localsvc.BrokerProcessOptions{BrokerOptions: opts,
		Waiting: func(dir string) {
			s.log.Warn("waiting for the previous embedded broker to finish saving its state", "dir", dir)
		}})
	if err != nil {
		return fmt.Errorf("dev: broker: %w (another port: --broker-port; your own Kafka: --brokers)", err)
	}
	s.servers = append(s.servers, b.Stop)
	s.brokerExited = b.Exited()
	s.info.Brokers = b.Addrs()
	s.info.Started = append(s.info.Started, fmt.Sprintf("Kafka-protocol broker (kfake, pid %d, log broker.log) %s", b.Pid(), b.Addrs()[0]))
	return nil
}

func (s *stack) sub(name string) string { return filepath.Join(s.cfg.Dir, name) }

func (s *stack) startPostgres(ctx context.Context) error {
	dir := s.sub("postgres")
	if err := reachableBy("postgres", dir); err != nil {
		return err
	}
	pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{Dir: dir, Port: s.cfg.PostgresPort, Durable: true})
	if err != nil {
		return fmt.Errorf("dev: postgres: %w (another port: --postgres-port; your own PostgreSQL: --database-url)", err)
	}
	s.servers = append(s.servers, pg.Stop)
	dsn, err := pg.CreateDatabase(ctx, "loanflow")
	if err != nil {
		return err
	}
	s.info.DatabaseURL = dsn
	s.info.Started = append(s.info.Started, fmt.Sprintf("PostgreSQL (wal_level=logical) 127.0.0.1:%d", pg.Port()))
	return nil
}

// reachableBy checks, when running as root (PostgreSQL then runs as
// osUser), that osUser can reach dir: every existing ancestor must be
// searchable by others.
func reachableBy(osUser, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup(osUser)
	if err != nil {
		return nil // localsvc reports the missing user with its fix
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil {
			st, ok := fi.Sys().(*syscall.Stat_t)
			owned := ok && strconv.FormatUint(uint64(st.Uid), 10) == u.Uid
			if !owned && fi.Mode().Perm()&0o001 == 0 {
				return fmt.Errorf("dev: PostgreSQL runs as user %s, which cannot enter %s (mode %o): "+
					"choose a data directory it can reach (e.g. --dir /var/tmp/loanflow-dev) or chmod o+x %s",
					osUser, d, fi.Mode().Perm(), d)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
