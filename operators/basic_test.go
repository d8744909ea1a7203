package operators_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

func TestStatelessChain(t *testing.T) {
	b := pipeline.NewBuilder("chain")
	src := pipeline.AddSource(b, "numbers", pipeline.SourceSpec[int64]{Decode: decodeInt})
	doubled := operators.Map(src, "double", func(v int64) (int64, error) { return v * 2, nil })
	even := operators.Filter(doubled, "big", func(v int64) bool { return v > 4 })
	keyed := pipeline.KeyBy(even, "by-parity", func(v int64) string { return fmt.Sprint(v % 3) })
	strs := operators.Map(keyed.Stream, "format", func(v int64) (string, error) { return fmt.Sprint(v), nil })
	var got pipeline.Collected[string]
	pipeline.CollectTo(strs, "out", &got)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := int64(1); i <= 5; i++ {
		if err := pipeline.Feed(l, "numbers", 0, i, i*1000); err != nil {
			t.Fatal(err)
		}
	}
	var parts []string
	for _, r := range got.Records() {
		parts = append(parts, fmt.Sprintf("%s@%d/k=%s", r.Value, r.Time, r.Key))
	}
	if g, w := strings.Join(parts, " "), "6@3000/k=0 8@4000/k=2 10@5000/k=1"; g != w {
		t.Fatalf("got  %s\nwant %s", g, w)
	}
}

func TestValidateNamesProblems(t *testing.T) {
	b := pipeline.NewBuilder("bad")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	late := pipeline.NewOutputTag[int64]("late")
	known := pipeline.NewOutputTag[int64]("known")
	split := operators.Split(src, "route", func(int64) pipeline.OutputTag[int64] { return known }, known, late)
	operators.Map(pipeline.Side(split, known), "route", func(v int64) (int64, error) { return v, nil })
	err := b.Validate()
	if err == nil {
		t.Fatal("Validate accepted a broken graph")
	}
	for _, want := range []string{
		`map "route": the name is already used by a split`,
		`split "route": side output "late" is not consumed`,
		`map "route": its output is not consumed`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

func decodeInt(raw *pipeline.RawRecord) (int64, error) {
	var v int64
	_, err := fmt.Sscan(string(raw.Value), &v)
	return v, err
}
