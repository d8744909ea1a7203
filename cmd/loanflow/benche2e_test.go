package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchE2EQuick runs `loanflow bench --only e2e --quick` (the real
// `loanflow dev` three times on one directory: as-of at rest and unknown
// applicants, the lookup join and the bureau past its capacity, then the
// sustained steps) and reads its report: every row the section promises is
// there, and each sustained step lost and duplicated nothing. No figure is
// judged (speed is the bench's business, not a test's); a section that
// fails or leaves a row out fails here instead of at the next `make bench`.
func TestBenchE2EQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the local stack three times")
	}
	requireServers(t)
	bin := buildLoanflow(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "BENCHMARKS.md")
	cmd := exec.Command(bin, "bench", "--only", "e2e", "--quick", "--out", out)
	cmd.Dir = dir
	logs, err := cmd.CombinedOutput()
	if err != nil {
		devLog, _ := os.ReadFile(filepath.Join(dir, "bench-profiles", "e2e-failed-loanflow.log"))
		t.Fatalf("loanflow bench --only e2e --quick: %v\n%s\nloanflow dev's log:\n%s", err, tailOf(string(logs), 60), tailOf(string(devLog), 40))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	report := string(b)
	for _, row := range []string{
		"| known customer at 50/s, as-of join: p50 / p99",
		"| known customer at 50/s, lookup join: p50 / p99",
		"| bureau simulator alone: p50 / p99",
		"| unknown applicant at 50/s: p50 / p99",
		"| unknown applicants offered at",
		"Where the time of the known customers at rest goes",
		"| PostgreSQL (postmaster and every backend) |",
		"| loanflow dev (API, CDC, registry, bureau simulator, 3 jobs) |",
		"Hottest process in the 500/s step",
	} {
		if !strings.Contains(report, row) {
			t.Errorf("the report has no %q", row)
		}
	}
	steps := 0
	for _, line := range strings.Split(report, "\n") {
		if !strings.HasPrefix(line, "| 200/s |") && !strings.HasPrefix(line, "| 500/s |") {
			continue
		}
		steps++
		cells := strings.Split(line, "|")
		// | offered | for | submitted/s | decided/s | accepted / rejected | p50 / p99 | answer | lost / duplicated | goal | met |
		if len(cells) < 10 || strings.TrimSpace(cells[8]) != "0 / 0" {
			t.Errorf("a sustained step lost or duplicated decisions: %s", line)
		}
		if acc := strings.TrimSpace(cells[5]); strings.HasPrefix(acc, "0 /") || !strings.HasSuffix(acc, "/ 0") {
			t.Errorf("a sustained step's applications were not all accepted: %s", line)
		}
	}
	if steps != 2 {
		t.Errorf("%d sustained steps in the report, want 2 (200/s and 500/s)\n%s", steps, report)
	}
}

// tailOf is the last n lines of s.
func tailOf(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
