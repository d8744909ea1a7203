package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/loanflow/loanflow/connectors/postgres"
	"github.com/loanflow/loanflow/internal/testenv"
)

// checkSnapshotLines checks the plain (not a terminal) output of `cdc
// snapshot` for table: no carriage returns or escapes, rows never going
// back, and a final "done rows N/N chunks C" line and summary with the
// count the test got from PostgreSQL.
func checkSnapshotLines(out, table string, rows, chunks int64) error {
	if strings.ContainsAny(out, "\r\033") {
		return fmt.Errorf("terminal control characters in non-terminal output: %q", out)
	}
	progress := regexp.MustCompile(regexp.QuoteMeta(table) + ` +\d+% rows (\d+)/(\d+|\?) chunks (\d+) rate \d+ rows/s ETA \S+$`)
	done := regexp.MustCompile(regexp.QuoteMeta(table) + ` done rows (\d+)/(\d+) chunks (\d+)$`)
	var last int64
	sawDone, sawSummary := false, false
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		switch m1, m2 := progress.FindStringSubmatch(l), done.FindStringSubmatch(l); {
		case m1 != nil:
			n, _ := strconv.ParseInt(m1[1], 10, 64)
			if n < last || n > rows {
				return fmt.Errorf("progress went from %d to %d rows (table has %d): %q", last, n, rows, l)
			}
			last = n
		case m2 != nil:
			n, _ := strconv.ParseInt(m2[1], 10, 64)
			c, _ := strconv.ParseInt(m2[3], 10, 64)
			if n != rows || c != chunks {
				return fmt.Errorf("done line says %d rows in %d chunks; the table has %d rows (%d chunks): %q", n, c, rows, chunks, l)
			}
			sawDone = true
		case strings.HasPrefix(l, table+": done, "):
			if !strings.HasPrefix(l, fmt.Sprintf("%s: done, %d rows read in %d chunks", table, rows, chunks)) {
				return fmt.Errorf("summary %q; the table has %d rows (%d chunks)", l, rows, chunks)
			}
			sawSummary = true
		}
	}
	if !sawDone || !sawSummary {
		return fmt.Errorf("no done line (%v) or summary (%v) in %q", sawDone, sawSummary, out)
	}
	return nil
}

// TestCDCSnapshotProgress runs a reader on a real PostgreSQL and broker and
// `loanflow cdc snapshot --table` against it, as an operator does: the
// command follows the snapshot to its end; its line-per-update output
// (stdout is not a terminal here) reaches the row count the test reads
// with SELECT count(*) and the chunk count that makes; --output json gives
// the same figures as a summary; --wait=false returns at once (and is the
// negative control: its output fails the same check).
func TestCDCSnapshotProgress(t *testing.T) {
	ctx := context.Background()
	brokers := testenv.Broker(t).Addrs()
	regURL := startRegistry(t, brokers)
	dsn := testenv.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{"CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t SELECT g, g FROM generate_series(1, 3456) g",
		"DELETE FROM t WHERE id % 7 = 0"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	name := strings.ReplaceAll(testenv.Name(t, "snap"), "-", "_")
	cfgFile := filepath.Join(t.TempDir(), "cdc.yaml")
	yaml := "name: " + name + "\ndatabase_url: " + dsn + "\nbrokers: [" + strings.Join(brokers, ", ") + "]\nschema_registry_url: " + regURL +
		"\ntopic_prefix: " + name + "\npositions_topic: " + name + "_positions\nsnapshot_txn_max_rows: 250\ntables:\n  - table: public.t\n"
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := postgres.LoadConfig(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := postgres.NewReader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()

	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := postgres.ReadStatus(ctx, cfg)
		if err == nil && st.Position != nil && st.Position.Snapshot == nil && len(st.Position.Tables) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reader never finished its initial snapshot: %+v %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var rows int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	chunks := rows/250 + 1 // the last chunk is short or empty

	out, err := run(t, newCDCCmd, "snapshot", "--config", cfgFile, "--table", "t", "--interval", "0", "--timeout", "3m")
	if err != nil {
		t.Fatalf("cdc snapshot: %v\n%s", err, out)
	}
	if err := checkSnapshotLines(out, "public.t", rows, chunks); err != nil {
		t.Error(err)
	}
	t.Logf("cdc snapshot output:\n%s", out)

	out, err = run(t, newCDCCmd, "snapshot", "--config", cfgFile, "--table", "public.t", "--output", "json", "--timeout", "3m")
	if err != nil {
		t.Fatalf("cdc snapshot --output json: %v\n%s", err, out)
	}
	var sum SnapshotSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("--output json is not JSON: %v\n%s", err, out)
	}
	if len(sum.Tables) != 1 || sum.Tables[0].Table != "public.t" || sum.Tables[0].Rows != rows || sum.Tables[0].Chunks != chunks ||
		sum.Tables[0].Written != rows || sum.Tables[0].Error != "" || sum.Request == "" {
		t.Errorf("json summary %+v; the table has %d rows (%d chunks)", sum, rows, chunks)
	}

	// Negative control: --wait=false does not follow; its output fails the check.
	out, err = run(t, newCDCCmd, "snapshot", "--config", cfgFile, "--table", "t", "--wait=false")
	if err != nil || !strings.Contains(out, "requested at") {
		t.Fatalf("cdc snapshot --wait=false: %v\n%s", err, out)
	}
	if err := checkSnapshotLines(out, "public.t", rows, chunks); err == nil {
		t.Error("the check accepted the output of a command that did not follow the snapshot")
	}
	// Wrong expectations fail it too.
	if err := checkSnapshotLines(strings.ReplaceAll(fmt.Sprintf("public.t done rows %d/%d chunks %d\npublic.t: done, %d rows read in %d chunks", rows, rows, chunks, rows, chunks), "\r", ""), "public.t", rows+1, chunks); err == nil {
		t.Error("the check accepted a row count that is not the table's")
	}

	// A table the reader does not publish: a clear error, not a hang.
	if _, err := conn.Exec(ctx, "CREATE TABLE other (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, newCDCCmd, "snapshot", "--config", cfgFile, "--table", "other", "--timeout", "3m")
	if err == nil || !strings.Contains(err.Error(), "not published") {
		t.Errorf("snapshot of an unpublished table: %v\n%s", err, out)
	}
}
