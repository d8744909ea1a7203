package schemas

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/sr"
)

// TestConcurrentDecodeManyWriters: goroutines share one serde and decode
// records of several writer versions at once; every record decodes to what
// was written (run with -race).
func TestConcurrentDecodeManyWriters(t *testing.T) {
	cl := newRegistry(t)
	ctx := context.Background()
	const subject = "many-writers-value"
	cl.SR().SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatNone}, subject)
	var records [][]byte
	for v := range 4 {
		extra := ""
		for i := range v {
			extra += fmt.Sprintf(`,{"name":"x%d","type":"long","default":0}`, i)
		}
		schema := `{"type":"record","name":"Customer","namespace":"io.loanflow.test","fields":[{"name":"id","type":"string"},{"name":"limit","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}}` + extra + `]}`
		w, err := NewSerde[map[string]any](ctx, cl, subject, schema)
		if err != nil {
			t.Fatal(err)
		}
		b, err := w.Encode(nil, map[string]any{"id": fmt.Sprint("c", v), "limit": fmt.Sprintf("%d.25", v)})
		if err != nil {
			t.Fatal(err)
		}
		records = append(records, b)
	}
	reader, err := NewSerde[customerV1Go](ctx, cl, subject, customerV1, ReadOnly(), MaxWriterSchemas(2))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				v := (g + i) % len(records)
				got, err := reader.Decode(records[v])
				if err != nil || got.ID != fmt.Sprint("c", v) || got.Limit.String() != fmt.Sprintf("%d.25", v) {
					t.Errorf("record %d: %+v (%v)", v, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestClientConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  ClientConfig
		want string
	}{
		{ClientConfig{RequestTimeout: -1}, "RequestTimeout"},
		{ClientConfig{MaxCachedSchemas: -1}, "MaxCachedSchemas"},
		{ClientConfig{URLs: []string{""}}, "empty URL"},
		{ClientConfig{UnknownIDCacheTTL: -1}, "UnknownIDCacheTTL"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v", c.cfg, err)
		}
	}
	if err := (ClientConfig{}).Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewSerde[LoanApplication](context.Background(), nil, "s", LoanApplicationSchema, MaxRecordBytes(3)); err == nil {
		t.Fatal("MaxRecordBytes below the header accepted")
	}
	if _, err := NewSerde[LoanApplication](context.Background(), nil, "s", `{"type":"recrd"}`); err == nil || !strings.Contains(err.Error(), "invalid schema") {
		t.Fatalf("invalid schema: %v", err)
	}
}
