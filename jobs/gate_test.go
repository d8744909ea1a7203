package jobs

import (
	"testing"

	"github.com/loanflow/loanflow/pipeline"
)

// TestHoldUntilCheckpoint: records before the first checkpoint are held
// and emitted in it, in order; later ones pass at once.
func TestHoldUntilCheckpoint(t *testing.T) {
	b := pipeline.NewBuilder("gate")
	src := pipeline.AddSource(b, "in", pipeline.SourceSpec[string]{Decode: func(r *pipeline.RawRecord) (string, error) { return string(r.Value), nil }})
	var got pipeline.Collected[string]
	pipeline.CollectTo(holdUntilCheckpoint(src, "hold"), "out", &got)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	feed := func(v string) {
		if err := pipeline.Feed(l, "in", 0, v, 1); err != nil {
			t.Fatal(err)
		}
	}
	feed("a")
	feed("b")
	if n := len(got.Records()); n != 0 {
		t.Fatalf("%d records passed before the first checkpoint", n)
	}
	if err := l.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	feed("c")
	var vs []string
	for _, r := range got.Records() {
		vs = append(vs, r.Value)
	}
	if len(vs) != 3 || vs[0] != "a" || vs[1] != "b" || vs[2] != "c" {
		t.Fatalf("got %v", vs)
	}
}
