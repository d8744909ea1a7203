package redis

import (
	"context"
	"errors"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/loanflow/loanflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func newSink(t *testing.T, url, prefix string) *Sink {
	t.Helper()
	s, err := New(Config{URL: url, KeyPrefix: prefix, DefaultTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestReplayIsIdempotent writes two batches, then replays the first (as a
// job restarted from an older checkpoint would) and a reordered mix: the
// newest version of every key wins, and a second replay changes nothing.
func TestReplayIsIdempotent(t *testing.T) {
	ctx := context.Background()
	rd := testenv.Redis(t)
	prefix := testenv.Name(t, "k") + ":"
	s := newSink(t, rd.URL(), prefix)
	cl := goredis.NewClient(&goredis.Options{Addr: rd.Addr()})
	defer cl.Close()

	first := []Op{
		{Key: "profile:1", Value: []byte("v1"), Version: 10},
		{Key: "profile:2", Value: []byte("v2"), Version: 11, TTL: 30 * time.Second},
		{Key: "profile:3", Value: []byte("v3"), Version: 12},
		{Key: "plain", Value: []byte("p1")},
	}
	second := []Op{
		{Key: "profile:1", Value: []byte("v1b"), Version: 20},
		{Key: "profile:3", Delete: true, Version: 21},
		{Key: "plain", Delete: true},
	}
	if _, err := s.Write(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, second); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"profile:1": "v1b", "profile:2": "v2", "profile:3": "", "plain": ""}
	check := func(stage string) {
		t.Helper()
		for k, w := range want {
			got, err := cl.Get(ctx, prefix+k).Result()
			if errors.Is(err, goredis.Nil) {
				got = ""
			} else if err != nil {
				t.Fatal(err)
			}
			if got != w {
				t.Errorf("%s: %s = %q, want %q", stage, k, got, w)
			}
		}
	}
	check("after writes")
	n, err := s.Write(ctx, first[:3]) // replay of the versioned part of the older batch
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("replay applied %d stale ops", n)
	}
	check("after replaying the first batch")
	if _, err := s.Write(ctx, append(append([]Op{}, second...), first[:3]...)); err != nil {
		t.Fatal(err)
	}
	check("after replaying both, reordered")
	if ttl := cl.PTTL(ctx, prefix+"profile:2").Val(); ttl <= 0 || ttl > 30*time.Second {
		t.Errorf("profile:2 TTL = %v, want (0, 30s]", ttl)
	}
}

// TestUnavailableIsRetryable: with the server down, Write fails with
// ErrUnavailable; once it is back, retrying the same batch succeeds.
func TestUnavailableIsRetryable(t *testing.T) {
	ctx := context.Background()
	rd := testenv.NewRedis(t)
	s := newSink(t, rd.URL(), "")
	batch := []Op{{Key: "profile:9", Delete: true, Version: 5}, {Key: "profile:8", Value: []byte("x"), Version: 6}}
	rd.Stop()
	if _, err := s.Write(ctx, batch); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Write with redis down: %v, want ErrUnavailable", err)
	}
	if err := rd.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Write(ctx, batch); err != nil || n != 2 {
		t.Fatalf("retry: applied %d, %v; want 2", n, err)
	}
	if n, err := s.Write(ctx, batch); err != nil || n != 0 {
		t.Fatalf("second retry: applied %d, %v; want 0 (both stale)", n, err)
	}
}

func TestInvalidOps(t *testing.T) {
	s, err := New(Config{URL: "redis://127.0.0.1:1/0"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, op := range []Op{{}, {Key: "k"}, {Key: "k", Value: []byte("v"), TTL: -1}, {Key: "k", Delete: true, Version: -1}} {
		if _, err := s.Write(context.Background(), []Op{op}); !errors.Is(err, ErrInvalidOp) {
			t.Errorf("Write(%+v) = %v, want ErrInvalidOp", op, err)
		}
	}
	if _, err := New(Config{}); !errors.Is(err, ErrConfig) {
		t.Errorf("New without URL: %v", err)
	}
}
