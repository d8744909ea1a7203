package api

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// nearCache keeps decoded credit profiles in the API process, in front of
// Redis, coherent with it by Redis's server-assisted client-side caching
// (CLIENT TRACKING in broadcasting mode on the prefix profile:): Redis
// pushes the name of every profile:{id} key that changes (set, deleted,
// expired, evicted, flushed) to a connection of the near cache's own, and
// the entry is dropped. A hit costs no Redis round trip, which at 5,000
// lookups/s was a fifth of the API's CPU (a write syscall and a read per
// GET, and the JSON decode).
//
// Coherence:
//   - Entries are served only while the invalidation connection is up
//     and subscribed; when it breaks (Redis restarted, network) the cache
//     is emptied and bypassed until a new connection is subscribed, since
//     invalidations may have been missed meanwhile.
//   - A GET's answer is stored only when no invalidation of its key's
//     shard (and no flush) arrived between the GET's start and its end
//     (the shard's generation did not move), so an invalidation that
//     overtook a GET's reply cannot leave a stale entry behind.
//   - An entry lives at most TTL even without an invalidation, and the
//     cache holds at most Max entries (a full cache drops entries at
//     random to make room).
//
// What Redis holds is what a hit returns, as fresh as Redis is, a push's
// delivery later (on loopback, well under a millisecond).
type nearCache struct {
	max  int
	ttl  time.Duration
	seed maphash.Seed
	log  *slog.Logger

	live   atomic.Bool
	gens   [64]atomic.Uint64 // invalidation generation per key shard
	epoch  atomic.Uint64     // moves on every flush
	hits   atomic.Int64
	mu     sync.RWMutex
	byID   map[string]nearEntry
	dialed func(ctx context.Context) (net.Conn, error)
	auth   []string // AUTH arguments, empty when none
}

type nearEntry struct {
	cp      CreditProfile
	expires time.Time
}

// nearToken is a key shard's invalidation state when a GET started.
type nearToken struct{ epoch, gen uint64 }

const nearPrefix = "profile:"

func newNearCache(opts *redis.Options, size int, ttl time.Duration, log *slog.Logger) *nearCache {
	n := &nearCache{max: size, ttl: ttl, seed: maphash.MakeSeed(), log: log, byID: map[string]nearEntry{}}
	dial := opts.Dialer
	network, addr := opts.Network, opts.Addr
	if network == "" {
		network = "tcp"
	}
	timeout := max(opts.DialTimeout, time.Second)
	n.dialed = func(ctx context.Context) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if dial != nil {
			return dial(ctx, network, addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	switch {
	case opts.Username != "":
		n.auth = []string{"AUTH", opts.Username, opts.Password}
	case opts.Password != "":
		n.auth = []string{"AUTH", opts.Password}
	}
	return n
}

func (n *nearCache) shard(id string) *atomic.Uint64 {
	return &n.gens[maphash.String(n.seed, id)%uint64(len(n.gens))]
}

// get returns id's profile when the cache holds a live entry and its
// invalidations are being received.
func (n *nearCache) get(id string) (CreditProfile, bool) {
	if !n.live.Load() {
		return CreditProfile{}, false
	}
	n.mu.RLock()
	e, ok := n.byID[id]
	n.mu.RUnlock()
	if !ok || time.Now().After(e.expires) {
		return CreditProfile{}, false
	}
	n.hits.Add(1)
	return e.cp, true
}

// token is taken before the GET whose answer put stores.
func (n *nearCache) token(id string) nearToken {
	return nearToken{n.epoch.Load(), n.shard(id).Load()}
}

// put stores cp unless its key was (or may have been) invalidated since
// tok was taken, or invalidations are not being received.
func (n *nearCache) put(id string, cp CreditProfile, tok nearToken) {
	if !n.live.Load() {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// Checked under the lock invalidate and flush take: an invalidation
	// either moved the generation already or runs after this store.
	if n.epoch.Load() != tok.epoch || n.shard(id).Load() != tok.gen {
		return
	}
	if _, ok := n.byID[id]; !ok && len(n.byID) >= n.max {
		drop := len(n.byID)/16 + 1 // random victims: map order is random
		for k := range n.byID {
			delete(n.byID, k)
			if drop--; drop == 0 {
				break
			}
		}
	}
	n.byID[id] = nearEntry{cp: cp, expires: time.Now().Add(n.ttl)}
}

func (n *nearCache) invalidate(keys []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range keys {
		id, ok := strings.CutPrefix(k, nearPrefix)
		if !ok {
			continue
		}
		n.shard(id).Add(1)
		delete(n.byID, id)
	}
}

func (n *nearCache) flush() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.epoch.Add(1)
	clear(n.byID)
}

func (n *nearCache) size() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return len(n.byID)
}

// run keeps an invalidation connection subscribed until ctx ends,
// reconnecting with backoff; the cache is bypassed while it is down.
func (n *nearCache) run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	var refused string // the last refusal logged as a warning
	for ctx.Err() == nil {
		started := time.Now()
		err := n.session(ctx)
		n.live.Store(false)
		n.flush()
		if ctx.Err() != nil {
			return
		}
		var re respError
		isRefusal := errors.As(err, &re)
		if isRefusal && strings.Contains(string(re), "TRACKING") {
			// A Redis without client tracking (before 6.0): no near
			// cache, every lookup goes to Redis.
			n.log.Warn("near cache disabled: Redis refused client tracking", "err", err)
			return
		}
		if time.Since(started) > 10*time.Second {
			backoff, refused = 50*time.Millisecond, ""
		}
		if isRefusal && string(re) != refused {
			// Redis answered a command of the setup with an error (a
			// wrong password, an ACL user without the commands or the
			// channel): a configuration to fix, not a blip, so it is said
			// once as a warning; the connection is retried meanwhile.
			refused = string(re)
			n.log.Warn("near cache bypassed: Redis refused its invalidation connection; "+
				"its user needs CLIENT ID, CLIENT TRACKING, SUBSCRIBE, PING and the channel __redis__:invalidate (ACL &__redis__:invalidate)",
				"err", err, "retry_in", backoff)
		} else {
			n.log.Debug("near cache: invalidation connection lost; bypassed until it is back", "err", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// nearPing is how often an idle invalidation connection is checked; a
// connection silent for 3 of them is dropped.
const nearPing = 2 * time.Second

func (n *nearCache) session(ctx context.Context) error {
	c, err := n.dialed(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	rc := &respConn{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if len(n.auth) > 0 {
		if _, err := rc.call(n.auth...); err != nil {
			return fmt.Errorf("near cache: AUTH: %w", err)
		}
	}
	v, err := rc.call("CLIENT", "ID")
	if err != nil {
		return fmt.Errorf("near cache: CLIENT ID: %w", err)
	}
	id, ok := v.(int64)
	if !ok {
		return fmt.Errorf("near cache: CLIENT ID answered %v", v)
	}
	// Redirected to this very connection, which then subscribes to the
	// invalidation channel (RESP2: push messages need a subscriber).
	if _, err := rc.call("CLIENT", "TRACKING", "ON", "REDIRECT", strconv.FormatInt(id, 10), "BCAST", "PREFIX", nearPrefix); err != nil {
		return fmt.Errorf("near cache: CLIENT TRACKING: %w", err)
	}
	if _, err := rc.call("SUBSCRIBE", "__redis__:invalidate"); err != nil {
		return fmt.Errorf("near cache: SUBSCRIBE: %w", err)
	}
	// Nothing stored before this point can be trusted: invalidations
	// were not being received.
	n.flush()
	n.live.Store(true)
	done, pinged := make(chan struct{}), make(chan struct{})
	go func() { // the only writer from here on
		defer close(pinged)
		t := time.NewTicker(nearPing)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			_ = c.SetWriteDeadline(time.Now().Add(nearPing))
			if err := rc.send("PING"); err != nil {
				c.Close()
				return
			}
		}
	}()
	defer func() {
		// Bypassed and emptied before anything else: invalidations are
		// no longer received.
		n.live.Store(false)
		n.flush()
		close(done)
		c.Close()
		<-pinged
	}()
	for {
		_ = c.SetReadDeadline(time.Now().Add(3 * nearPing))
		v, err := rc.read()
		if err != nil {
			return err
		}
		msg, ok := v.([]any)
		if !ok || len(msg) < 2 {
			continue
		}
		kind, _ := msg[0].(string)
		if kind != "message" || len(msg) != 3 {
			continue // pong, subscribe confirmations
		}
		switch keys := msg[2].(type) {
		case nil: // FLUSHALL / FLUSHDB
			n.flush()
		case []any:
			ks := make([]string, 0, len(keys))
			for _, k := range keys {
				if s, ok := k.(string); ok {
					ks = append(ks, s)
				}
			}
			n.invalidate(ks)
		case string:
			n.invalidate([]string{keys})
		}
	}
}

// respConn is the little of RESP2 the invalidation connection speaks.
type respConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

type respError string

func (e respError) Error() string { return string(e) }

func (rc *respConn) send(args ...string) error {
	fmt.Fprintf(rc.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(rc.w, "$%d\r\n%s\r\n", len(a), a)
	}
	return rc.w.Flush()
}

func (rc *respConn) call(args ...string) (any, error) {
	if err := rc.send(args...); err != nil {
		return nil, err
	}
	v, err := rc.read()
	if err != nil {
		return nil, err
	}
	if e, ok := v.(respError); ok {
		return nil, e
	}
	return v, nil
}

// respMaxDepth bounds the nesting of a reply: an invalidation is an
// array of key names inside a message array (2).
const respMaxDepth = 4

// read returns a simple or bulk string as string, an integer as int64,
// an array as []any, a null as nil and an error reply as respError.
// What it allocates grows with the bytes received, not with the lengths a
// reply announces, and a reply nested deeper than respMaxDepth is an
// error: a bad or hostile peer can neither make it allocate a length's
// worth of memory for a few bytes nor recurse without bound.
func (rc *respConn) read() (any, error) { return rc.readDepth(0) }

func (rc *respConn) readDepth(depth int) (any, error) {
	// A line longer than the reader's buffer (4 KiB) is no Redis reply
	// to the commands sent here.
	raw, err := rc.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, fmt.Errorf("near cache: reply line longer than %d bytes", rc.r.Size())
	}
	if err != nil {
		return nil, err
	}
	line := string(raw)
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("near cache: malformed reply %q", line)
	}
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return respError(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		l, err := strconv.Atoi(body)
		if err != nil || l < -1 || l > 512<<20 {
			return nil, fmt.Errorf("near cache: bad bulk length %q", body)
		}
		if l == -1 {
			return nil, nil
		}
		if l <= 64<<10 {
			b := make([]byte, l+2)
			if _, err := io.ReadFull(rc.r, b); err != nil {
				return nil, err
			}
			return string(b[:l]), nil
		}
		var b bytes.Buffer // grows as the bytes arrive
		if _, err := io.CopyN(&b, rc.r, int64(l)+2); err != nil {
			return nil, err
		}
		return string(b.Bytes()[:l]), nil
	case '*':
		l, err := strconv.Atoi(body)
		if err != nil || l < -1 || l > 1<<20 {
			return nil, fmt.Errorf("near cache: bad array length %q", body)
		}
		if l == -1 {
			return nil, nil
		}
		if depth >= respMaxDepth {
			return nil, fmt.Errorf("near cache: reply nested deeper than %d", respMaxDepth)
		}
		out := make([]any, 0, min(l, 1024)) // grows as the elements arrive
		for range l {
			v, err := rc.readDepth(depth + 1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("near cache: unexpected reply %q", line)
}
