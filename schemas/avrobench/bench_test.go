package avrobench

import (
	"context"
	"flag"
	"strings"
	"testing"

	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/schemas"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// BenchmarkSerde runs every case as a sub-benchmark:
//
//	go test -run '^$' -bench . -benchmem ./schemas/...
func BenchmarkSerde(b *testing.B) {
	url, stop, err := embeddedRegistry(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{url}})
	if err != nil {
		b.Fatal(err)
	}
	cases, err := Cases(context.Background(), cl, "")
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range cases {
		b.Run(c.Name(), c.Fn)
	}
}

// TestCasesRunAndReport checks that every case runs against a real
// registry and that the report has a row per Avro case.
func TestCasesRunAndReport(t *testing.T) {
	url, stop, err := embeddedRegistry(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	cases, err := Cases(context.Background(), cl, "t.")
	if err != nil {
		t.Fatal(err)
	}
	// One iteration per case: this checks the cases, it measures nothing.
	prev := flag.Lookup("test.benchtime").Value.String()
	if err := flag.Set("test.benchtime", "1x"); err != nil {
		t.Fatal(err)
	}
	defer flag.Set("test.benchtime", prev)
	rep := Report{GoVersion: "go", CPUs: 1}
	avro := 0
	for _, c := range cases {
		r := testing.Benchmark(c.Fn)
		if r.N == 0 {
			t.Fatalf("%s did not run", c.Name())
		}
		rep.Results = append(rep.Results, Result{Case: c, NsPerOp: 1})
		if c.Format == "avro" {
			avro++
		}
	}
	if avro != 13 {
		t.Fatalf("%d avro cases, want 13 (5 records × 2, envelope × 2, evolved)", avro)
	}
	md := rep.Markdown()
	if strings.Count(md, "\n| ") != avro+1 || !strings.Contains(md, "| Customer360 | decode-evolved |") {
		t.Fatalf("report:\n%s", md)
	}
}
