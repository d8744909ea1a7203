package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loanflow/loanflow/internal/testenv"
)

// nearHits is the API's count of lookups the near cache answered.
func nearHits(t *testing.T, e *env) float64 {
	t.Helper()
	return counter(t, e, "loanflow_api_profile_near_cache_hits_total")
}

func nearLive(t *testing.T, e *env) bool {
	t.Helper()
	mfs, err := e.srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "loanflow_api_profile_near_cache_live" {
			return mf.GetMetric()[0].GetGauge().GetValue() == 1
		}
	}
	t.Fatal("no loanflow_api_profile_near_cache_live gauge")
	return false
}

// TestNearCacheFollowsRedis: a profile served from the near cache (no
// Redis round trip) follows every change of its Redis entry, whoever made
// it: a rewrite, a delete, a FLUSHALL; and the near cache is bypassed
// while its invalidation connection is gone. The entries live an hour, so
// only Redis's invalidations can move them. The expected values are what
// the test itself writes to Redis or PostgreSQL.
func TestNearCacheFollowsRedis(t *testing.T) {
	rd := testenv.NewRedis(t)
	e := newEnv(t, func(c *Config) { c.RedisURL = rd.URL(); c.NearCacheTTL = time.Hour })
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer c.Close()
	tok := e.lender("bank-near")
	e.customer("n-1", "Annie Easley", "666-77-8888", "bank-near")
	waitFor(t, "near cache live", func() bool { return nearLive(t, e) })

	if p, _ := e.profile(tok, "n-1"); p.Source != "database" || p.Score != 710 {
		t.Fatalf("first lookup: %+v", p)
	}
	if p, _ := e.profile(tok, "n-1"); p.Source != "cache" || p.Score != 710 { // Redis, then kept near
		t.Fatalf("second lookup: %+v", p)
	}
	before := nearHits(t, e)
	for range 3 {
		if p, _ := e.profile(tok, "n-1"); p.Source != "cache" || p.Score != 710 {
			t.Fatalf("near lookup: %+v", p)
		}
	}
	// The control: these lookups did not reach Redis, so without
	// invalidations the changes below would never be seen.
	if got := nearHits(t, e) - before; got != 3 {
		t.Fatalf("near cache answered %v of 3 lookups", got)
	}

	// Someone rewrites the Redis entry: the API follows it.
	raw, err := c.Get(ctx, "profile:n-1").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var cp CreditProfile
	if err := json.Unmarshal(raw, &cp); err != nil {
		t.Fatal(err)
	}
	cp.Score = 455
	raw, _ = json.Marshal(cp)
	if err := c.Set(ctx, "profile:n-1", raw, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rewritten score", func() bool { p, _ := e.profile(tok, "n-1"); return p.Score == 455 })

	// The row changes in PostgreSQL and the entry is deleted (what the
	// cache-invalidation job does): the next lookup loads the new row.
	if _, err := e.srv.Pool().Exec(ctx, "UPDATE credit_profiles SET current_score = 612 WHERE customer_id = 'n-1'"); err != nil {
		t.Fatal(err)
	}
	if err := c.Del(ctx, "profile:n-1").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new row", func() bool { p, _ := e.profile(tok, "n-1"); return p.Score == 612 })

	// FLUSHALL empties the near cache too.
	e.profile(tok, "n-1") // cached in Redis and near again
	if _, err := e.srv.Pool().Exec(ctx, "UPDATE credit_profiles SET current_score = 633 WHERE customer_id = 'n-1'"); err != nil {
		t.Fatal(err)
	}
	if err := c.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the row after FLUSHALL", func() bool { p, _ := e.profile(tok, "n-1"); return p.Score == 633 })

	// The invalidation connection is killed: the near cache is emptied
	// (invalidations may have been missed) and refills once a new
	// connection is subscribed.
	e.profile(tok, "n-1")
	e.profile(tok, "n-1")
	if e.srv.near.size() == 0 {
		t.Fatal("nothing near before the kill")
	}
	subscriber := func() string {
		l, err := c.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(l, "\n") {
			if strings.Contains(line, "sub=1") {
				return strings.Fields(line)[0] // id=N
			}
		}
		return ""
	}
	killed := subscriber()
	if killed == "" {
		t.Fatal("no subscribed invalidation connection in CLIENT LIST")
	}
	if err := c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new invalidation connection", func() bool { id := subscriber(); return id != "" && id != killed && nearLive(t, e) })
	if got := e.srv.near.size(); got != 0 {
		t.Fatalf("%d entries survived the lost invalidation connection", got)
	}
	if _, err := e.srv.Pool().Exec(ctx, "UPDATE credit_profiles SET current_score = 644 WHERE customer_id = 'n-1'"); err != nil {
		t.Fatal(err)
	}
	if err := c.Del(ctx, "profile:n-1").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the row after the reconnect", func() bool { p, _ := e.profile(tok, "n-1"); return p.Score == 644 })
}

// TestNearCacheFillRace: a GET's answer is not kept when an invalidation
// of its key (or a flush) arrived while the GET was under way, whatever
// order the reply and the invalidation came in.
func TestNearCacheFillRace(t *testing.T) {
	n := newNearCache(&redis.Options{Addr: "127.0.0.1:1"}, 10, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))
	n.live.Store(true)
	old := CreditProfile{CustomerID: "a", Score: 1}

	tok := n.token("a")
	n.invalidate([]string{"profile:a"}) // overtook the GET's reply
	n.put("a", old, tok)
	if _, ok := n.get("a"); ok {
		t.Fatal("kept a GET's answer its key's invalidation overtook")
	}
	tok = n.token("a")
	n.flush()
	n.put("a", old, tok)
	if _, ok := n.get("a"); ok {
		t.Fatal("kept a GET's answer a flush overtook")
	}
	// The control: a GET no invalidation overtook (keys without the
	// prefix are not profiles) is kept and served.
	tok = n.token("a")
	n.invalidate([]string{"other:a"})
	n.put("a", old, tok)
	if got, ok := n.get("a"); !ok || got.Score != 1 {
		t.Fatalf("a quiet GET's answer was not kept: %+v %v", got, ok)
	}
	n.invalidate([]string{"profile:a"})
	if _, ok := n.get("a"); ok {
		t.Fatal("served an invalidated entry")
	}
	n.live.Store(false)
	n.put("a", old, n.token("a"))
	if _, ok := n.get("a"); ok {
		t.Fatal("kept or served an entry while invalidations are not received")
	}
	// Full: room is made, the newest entry is kept.
	n.live.Store(true)
	for i := range 25 {
		id := "k" + string(rune('a'+i))
		n.put(id, CreditProfile{CustomerID: id}, n.token(id))
		if _, ok := n.get(id); !ok {
			t.Fatalf("entry %s not kept", id)
		}
		if n.size() > 10 {
			t.Fatalf("%d entries, bound 10", n.size())
		}
	}
}
