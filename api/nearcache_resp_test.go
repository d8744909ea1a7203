package api

import (
	"bufio"
	"context"
	"encoding/json"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loanflow/loanflow/internal/testenv"
)

// TestNearCacheRESPBadInput: the invalidation connection's RESP reader
// answers a malformed or hostile reply with an error, without a panic,
// without recursing as deep as the reply nests and without allocating
// the lengths a reply announces before their bytes arrive. The control:
// an invalidation message and a flush, written here from the RESP2
// specification, parse to what the specification says.
func TestNearCacheRESPBadInput(t *testing.T) {
	read := func(in string) (any, error) {
		rc := &respConn{r: bufio.NewReader(strings.NewReader(in))}
		return rc.read()
	}
	// The control.
	got, err := read("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*2\r\n$9\r\nprofile:a\r\n$9\r\nprofile:b\r\n")
	want := []any{"message", "__redis__:invalidate", []any{"profile:a", "profile:b"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("invalidation message: %#v, %v", got, err)
	}
	got, err = read("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*-1\r\n")
	if want := []any{"message", "__redis__:invalidate", nil}; err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("flush message: %#v, %v", got, err)
	}
	big := strings.Repeat("k", 100<<10) // a bulk string past the small-read path
	if got, err := read("$102400\r\n" + big + "\r\n"); err != nil || got != big {
		t.Fatalf("a 100 KiB bulk string: %d bytes, %v", len(got.(string)), err)
	}

	for _, in := range []string{
		"", "\r\n", "+OK\n", "?x\r\n", ":12x\r\n", "$abc\r\n", "$-2\r\n", "$5\r\nab", "*-2\r\n", "*2\r\n:1\r\n",
		"$" + "9999999999999" + "\r\n", "*" + "9999999999999" + "\r\n",
		"+" + strings.Repeat("x", 1<<20) + "\r\n",   // a line no reply to these commands has
		strings.Repeat("*1\r\n", 100000) + ":1\r\n", // nested 100,000 deep
	} {
		if v, err := read(in); err == nil {
			t.Errorf("%.40q... parsed without an error, as a %T", in, v)
		}
	}

	// Announced lengths cost memory only as their bytes arrive: a few
	// bytes announcing a 64 MiB string or million-element arrays (16 MiB
	// each), with nothing behind them.
	for _, in := range []string{
		"$67108864\r\nabc",
		strings.Repeat("*1048576\r\n", 4),
		"*1048576\r\n$67108864\r\n",
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if _, err := read(in); err == nil {
			t.Errorf("%.40q parsed without an error", in)
		}
		runtime.ReadMemStats(&after)
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
			t.Errorf("%.40q: %d MiB allocated for %d bytes of input", in, grew>>20, len(in))
		}
	}
}

// TestNearCacheACLUser: with a Redis URL naming an ACL user
// (redis://user:password@), the invalidation connection authenticates as
// that user. A user without the invalidation channel (Redis 7's default,
// resetchannels) is refused at SUBSCRIBE: the near cache stays bypassed,
// lookups stay right (from Redis), and the refusal is logged as a warning
// an operator sees, not only at debug level. Once the channel is granted
// the retried connection subscribes and the near cache follows Redis's
// invalidations. The control for "bypassed": the near-hit counter, which
// moves only once the channel is granted.
func TestNearCacheACLUser(t *testing.T) {
	rd := testenv.NewRedis(t)
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer c.Close()
	if err := c.Do(ctx, "ACL", "SETUSER", "api", "on", ">s3cret", "~*", "+@all", "resetchannels").Err(); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(cfg *Config) {
		cfg.RedisURL = "redis://api:s3cret@" + rd.Addr() + "/0"
		cfg.NearCacheTTL = time.Hour
	})
	tok := e.lender("bank-acl")
	e.customer("acl-1", "Dorothy Vaughan", "555-66-7777", "bank-acl")
	warned := func() bool {
		for _, line := range strings.Split(e.logs.String(), "\n") {
			if strings.Contains(line, `"level":"WARN"`) && strings.Contains(line, "near cache") && strings.Contains(line, "NOPERM") {
				return true
			}
		}
		return false
	}
	waitFor(t, "a warning naming Redis's refusal", warned)
	for i, want := range []string{"database", "cache", "cache"} {
		if p, r := e.profile(tok, "acl-1"); r.status != 200 || p.Source != want || p.Score != 710 {
			t.Fatalf("lookup %d without the channel: %d %+v, want from %s", i, r.status, p, want)
		}
	}
	if nearLive(t, e) || nearHits(t, e) != 0 {
		t.Fatalf("near cache live %v with %v hits without the invalidation channel", nearLive(t, e), nearHits(t, e))
	}

	if err := c.Do(ctx, "ACL", "SETUSER", "api", "&__redis__:invalidate").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the near cache live as user api", func() bool { return nearLive(t, e) })
	if who, err := c.ClientList(ctx).Result(); err != nil || !strings.Contains(who, "sub=1") || !strings.Contains(who, "user=api") {
		t.Fatalf("CLIENT LIST: %v\n%s", err, who)
	}
	e.profile(tok, "acl-1") // from Redis, kept near
	before := nearHits(t, e)
	if p, _ := e.profile(tok, "acl-1"); p.Score != 710 || nearHits(t, e) != before+1 {
		t.Fatalf("near lookup: %+v, near hits %v -> %v", p, before, nearHits(t, e))
	}
	raw, err := c.Get(ctx, "profile:acl-1").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var cp CreditProfile
	if err := json.Unmarshal(raw, &cp); err != nil {
		t.Fatal(err)
	}
	cp.Score = 321
	raw, _ = json.Marshal(cp)
	if err := c.Set(ctx, "profile:acl-1", raw, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rewritten score", func() bool { p, _ := e.profile(tok, "acl-1"); return p.Score == 321 })
}
