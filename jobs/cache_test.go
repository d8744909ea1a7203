package jobs

import (
	"context"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
)

// TestCacheInvalidationEndToEnd: with the real CDC reader streaming the
// API's tables, each change of a customer or its credit profile deletes
// exactly that customer's cached profile (versioned by the change's LSN),
// a TRUNCATE deletes them all, and a restarted job goes on; on both
// brokers.
func TestCacheInvalidationEndToEnd(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) { testCacheInvalidation(t, newStackOn(t, seeds)) })
}

func testCacheInvalidation(t *testing.T, s *stack) {
	s.env.RedisURL = testenv.NewRedis(t).URL() // TRUNCATE flushes every profile: a server of its own
	opts, err := goredis.ParseURL(s.env.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	ids := []string{"c-profile", "c-customer", "c-quiet", "c-gone", "c-sentinel"}
	for _, id := range ids {
		s.addCustomer(customer{ID: id, Tier: "LOW", Limit: "1000.00", Balance: "0", Score: 700})
	}
	ctx := context.Background()
	// cache fills the way the API's cache-aside does; invalidated waits
	// until the job deleted a key.
	cache := func(ids ...string) {
		for _, id := range ids {
			if err := rdb.Set(ctx, "profile:"+id, `{"customer_id":"`+id+`"}`, time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	invalidated := func(id string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for rdb.Exists(ctx, "profile:"+id).Val() == 1 {
			if time.Now().After(deadline) {
				t.Fatalf("profile:%s was not invalidated", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The snapshot's reads invalidate too: every key is cached before the
	// snapshot and waited for, so the job is past each key's snapshot read
	// (they are spread over partitions, which run in no common order).
	cache(ids...)
	s.startCDC()
	job := testenv.Name(t, "cache")
	w := runWorker(t, s.env.Brokers, buildCache(t, job, s.env), t.TempDir())
	for _, id := range ids {
		invalidated(id)
	}

	cache("c-profile", "c-customer", "c-quiet", "c-gone")
	s.exec("UPDATE credit_profiles SET current_score = 650, updated_at = now() WHERE customer_id = 'c-profile'")
	s.exec("UPDATE customers SET credit_limit = 2000, version = version + 1 WHERE customer_id = 'c-customer'")
	s.exec("DELETE FROM credit_profiles WHERE customer_id = 'c-gone'")
	s.exec("DELETE FROM customers WHERE customer_id = 'c-gone'")
	for _, id := range []string{"c-profile", "c-customer", "c-gone"} {
		invalidated(id)
	}
	// A later change of the sentinel is processed after the ones above: by
	// then c-quiet must still be cached.
	cache("c-sentinel")
	s.exec("UPDATE credit_profiles SET current_score = 702 WHERE customer_id = 'c-sentinel'")
	invalidated("c-sentinel")
	if rdb.Exists(ctx, "profile:c-quiet").Val() != 1 {
		t.Fatal("profile:c-quiet was invalidated without a change")
	}
	v, err := rdb.Get(ctx, "{profile:c-profile}#v").Result()
	if lsn, _ := strconv.ParseInt(v, 10, 64); err != nil || lsn <= 0 {
		t.Fatalf("version of profile:c-profile = %q, %v; want the change's LSN", v, err)
	}

	// After a restart the job goes on where it stopped.
	w.halt(t)
	w = runWorker(t, s.env.Brokers, buildCache(t, job, s.env), t.TempDir())
	cache("c-profile")
	s.exec("UPDATE credit_profiles SET current_score = 640 WHERE customer_id = 'c-profile'")
	invalidated("c-profile")

	// TRUNCATE invalidates every cached profile.
	cache("c-quiet", "c-customer")
	s.exec("TRUNCATE credit_profiles")
	invalidated("c-quiet")
	invalidated("c-customer")
	w.halt(t)
}

func buildCache(t testing.TB, job string, env Env) *pipeline.Builder {
	t.Helper()
	b := pipeline.NewBuilder(job)
	if err := BuildCacheInvalidation(b, env, CacheConfig{}); err != nil {
		t.Fatal(err)
	}
	return b
}
