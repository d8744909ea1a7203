package pipeline_test

import (
	"strings"
	"testing"

	"github.com/loanflow/loanflow/pipeline"
)

func decode(raw *pipeline.RawRecord) (string, error) { return string(raw.Value), nil }

// TestHeartbeatAdvancesWatermark: a heartbeat record moves its partition's
// watermark without being emitted.
func TestHeartbeatAdvancesWatermark(t *testing.T) {
	b := pipeline.NewBuilder("hb")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[string]{
		Decode: decode,
		Heartbeat: func(raw *pipeline.RawRecord) (int64, bool) {
			if _, ok := raw.Header("hb"); ok {
				return raw.Timestamp, true
			}
			return 0, false
		},
	})
	var got pipeline.Collected[string]
	pipeline.CollectTo(src, "out", &got)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.FeedRaw("src", pipeline.RawRecord{Value: []byte("a"), Timestamp: 1000}); err != nil {
		t.Fatal(err)
	}
	if err := l.FeedRaw("src", pipeline.RawRecord{Timestamp: 5000, Headers: []pipeline.Header{{Key: "hb"}}}); err != nil {
		t.Fatal(err)
	}
	if n := len(got.Records()); n != 1 {
		t.Fatalf("%d records emitted, want 1 (the heartbeat is not data)", n)
	}
	if w, _ := got.Watermark(); w.Time != 4999 {
		t.Fatalf("watermark %d after a heartbeat at 5000, want 4999", w.Time)
	}
}

// TestPlanSplitsAtRepartitions checks subtopologies and their topics.
func TestPlanSplitsAtRepartitions(t *testing.T) {
	b := pipeline.NewBuilder("plan")
	src := pipeline.AddSource(b, "orders", pipeline.SourceSpec[string]{Topic: "orders", Decode: decode})
	byCustomer := pipeline.KeyBy(src, "by-customer", func(s string) string { return s })
	table := pipeline.AddSource(b, "customers", pipeline.SourceSpec[string]{Topic: "customers", Decode: decode})
	u := pipeline.Union("both", byCustomer.Stream, table)
	pipeline.ToTopic(u, "out", pipeline.TopicSinkSpec[string]{Topic: "out", Codec: pipeline.StringCodec()})
	p, err := b.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Subtopologies) != 2 {
		t.Fatalf("%d subtopologies, want 2:\n%s", len(p.Subtopologies), p.Describe())
	}
	counts := map[string]int32{"orders": 3, "customers": 6}
	if err := p.Resolve(func(t string) (int32, bool) { c, ok := counts[t]; return c, ok }); err != nil {
		t.Fatal(err)
	}
	if got := p.RepartitionPartitions("plan-by-customer-repartition"); got != 6 {
		t.Fatalf("repartition topic sized %d, want 6 (the partitions of the table it is joined with)", got)
	}
	desc := p.Describe()
	for _, want := range []string{"reads  orders", "writes plan-by-customer-repartition", "reads  plan-by-customer-repartition"} {
		if !strings.Contains(desc, want) {
			t.Errorf("plan does not say %q:\n%s", want, desc)
		}
	}
}

func TestResolveRejectsMismatchedPartitions(t *testing.T) {
	b := pipeline.NewBuilder("mismatch")
	a := pipeline.AddSource(b, "a", pipeline.SourceSpec[string]{Topic: "a", Decode: decode})
	c := pipeline.AddSource(b, "c", pipeline.SourceSpec[string]{Topic: "c", Decode: decode})
	pipeline.Discard(pipeline.Union("u", a, c))
	p, err := b.Plan()
	if err != nil {
		t.Fatal(err)
	}
	err = p.Resolve(func(t string) (int32, bool) { return map[string]int32{"a": 2, "c": 3}[t], true })
	if err == nil || !strings.Contains(err.Error(), `"a" (2 partitions) and "c" (3 partitions)`) {
		t.Fatalf("Resolve = %v", err)
	}
}
