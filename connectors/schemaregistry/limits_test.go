package schemaregistry

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentRegistrations: writers racing on one registry get one id
// per distinct schema and one version per schema and subject, without gaps.
func TestConcurrentRegistrations(t *testing.T) {
	r := start(t, Config{DefaultCompatibility: CompatNone})
	cl := srClient(t, r.Registry)
	ctx := context.Background()
	const workers, schemas = 8, 10
	ids := make([][]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range schemas {
				s := fmt.Sprintf(`{"type":"record","name":"R","fields":[{"name":"f%d","type":"long"}]}`, i)
				subject := fmt.Sprintf("c%d-value", w%2)
				id, err := cl.RegisterSchema(ctx, subject, avroSchema(s), -1, -1)
				if err != nil {
					t.Error(err)
					return
				}
				ids[w] = append(ids[w], id)
			}
		}()
	}
	wg.Wait()
	for w := 1; w < workers; w++ {
		if fmt.Sprint(ids[w]) != fmt.Sprint(ids[0]) {
			t.Fatalf("worker %d got ids %v, worker 0 %v", w, ids[w], ids[0])
		}
	}
	seen := map[int]bool{}
	for _, id := range ids[0] {
		if seen[id] {
			t.Fatalf("one id for two schemas: %v", ids[0])
		}
		seen[id] = true
	}
	for _, subject := range []string{"c0-value", "c1-value"} {
		vs, err := cl.SubjectVersions(ctx, subject)
		if err != nil || len(vs) != schemas || vs[0] != 1 || vs[schemas-1] != schemas {
			t.Fatalf("%s versions %v (%v)", subject, vs, err)
		}
	}
}

func TestLimits(t *testing.T) {
	r := start(t, Config{MaxSchemas: 3, MaxVersionsPerSubject: 2, DefaultCompatibility: CompatNone})
	cl := srClient(t, r.Registry)
	ctx := context.Background()
	reg := func(subject, typ string) error {
		_, err := cl.RegisterSchema(ctx, subject, avroSchema(`"`+typ+`"`), -1, -1)
		return err
	}
	for _, c := range [][2]string{{"a-value", "int"}, {"a-value", "long"}, {"b-value", "string"}} {
		if err := reg(c[0], c[1]); err != nil {
			t.Fatal(err)
		}
	}
	msg := responseErr(t, reg("a-value", "double"), 42205)
	if !strings.Contains(msg, "MaxVersionsPerSubject") {
		t.Fatalf("version limit message: %s", msg)
	}
	msg = responseErr(t, reg("c-value", "double"), 42205)
	if !strings.Contains(msg, "MaxSchemas") {
		t.Fatalf("schema limit message: %s", msg)
	}
	// An existing schema under a new subject needs no new id.
	if err := reg("c-value", "string"); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "Brokers is empty"},
		{Config{Brokers: []string{"b:9092"}, Listen: "nope"}, "Listen"},
		{Config{Brokers: []string{"b:9092"}, DefaultCompatibility: "SOMETIMES"}, "DefaultCompatibility"},
		{Config{Brokers: []string{"b:9092"}, MaxSchemaBytes: 10}, "MaxSchemaBytes"},
		{Config{Brokers: []string{"b:9092"}, MaxSchemas: -1}, "MaxSchemas"},
		{Config{Brokers: []string{"b:9092"}, WriteTimeout: -time.Second}, "timeouts"},
		{Config{Brokers: []string{"b:9092"}, ReplicationFactor: -2}, "ReplicationFactor"},
	}
	for _, c := range cases {
		if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	if err := (Config{Brokers: []string{"b:9092"}, DefaultCompatibility: "full_transitive"}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestRunStopsWithoutBroker: an unreachable broker is a Run error naming
// the brokers, within the load timeout, not a hang.
func TestRunStopsWithoutBroker(t *testing.T) {
	r, err := New(Config{Brokers: []string{"127.0.0.1:1"}, Listen: "127.0.0.1:0", LoadTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Run without a broker: %v", err)
	}
	if err := r.Run(context.Background()); err != ErrStopped {
		t.Fatalf("second Run: %v", err)
	}
}
