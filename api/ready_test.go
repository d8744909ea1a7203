package api

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/internal/testenv"
)

// TestReadyzWaitsForThePipeline: /readyz answers 503 with Retry-After
// while the applications topic is missing, then while the decisions
// job's group owns no partition, and 200 once both are true.
func TestReadyzWaitsForThePipeline(t *testing.T) {
	apps, group := testenv.Name(t, "apps_late"), testenv.Name(t, "decisions_group")
	e := newEnv(t, func(c *Config) { c.ApplicationsTopic, c.ReadyGroups = apps, []string{group} })
	// expect waits until /readyz answers status with why (the client's
	// metadata of a new topic may lag behind its creation).
	expect := func(status int, why string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		r := e.do("GET", "/readyz", "", nil)
		for r.status != status || !strings.Contains(string(r.body), why) {
			if time.Now().After(deadline) {
				t.Fatalf("readyz: %d %s, want %d with %q", r.status, r.body, status, why)
			}
			time.Sleep(100 * time.Millisecond)
			r = e.do("GET", "/readyz", "", nil)
		}
		if status == http.StatusServiceUnavailable && r.header.Get("Retry-After") == "" {
			t.Fatal("a 503 from /readyz without Retry-After")
		}
	}
	expect(http.StatusServiceUnavailable, "waiting for topics "+apps)
	createTopics(t, e.brokers, apps)
	expect(http.StatusServiceUnavailable, "waiting for consumer group "+group)

	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(apps))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		cl.PollFetches(ctx)
		cancel()
		if r := e.do("GET", "/readyz", "", nil); r.status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("readyz not ready a minute after the group got its partitions")
		}
	}
	expect(http.StatusOK, `"pipeline":"ok"`)
}
