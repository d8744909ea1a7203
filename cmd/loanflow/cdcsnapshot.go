package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/connectors/postgres"
)

func newCDCSnapshotCmd() *cobra.Command {
	var (
		cfgPath  string
		tables   []string
		wait     bool
		timeout  time.Duration
		interval time.Duration
		out      outputFlag
	)
	cmd := &cobra.Command{
		Use:   "snapshot --config FILE --table T [--table T2] [--wait=false] [--output table|json]",
		Short: "Snapshot tables again while the reader streams (incremental, watermark-based), showing progress",
		Long: "Writes a loanflow.signal logical message asking the running reader to read the tables again in chunks " +
			"(op r, source.snapshot incremental), interleaved with the stream and exactly once, then follows the " +
			"reader's committed position in Kafka until every table is read: a progress bar on a terminal (rows and " +
			"chunks of the estimate, rate, ETA), a line per update otherwise, and with --output json a final summary. " +
			"Interrupting the command stops the watching, not the snapshot. --wait=false only writes the request. " +
			"Metrics: loanflow_cdc_incremental_snapshot_rows{,_estimated} and _chunks{,_estimated} per table.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" || len(tables) == 0 {
				return errors.New("cdc snapshot: --config FILE and at least one --table schema.table are required")
			}
			if err := out.validate(); err != nil {
				return fmt.Errorf("cdc snapshot: %w", err)
			}
			cfg, err := postgres.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			for i, t := range tables {
				if !strings.Contains(t, ".") {
					tables[i] = "public." + t
				}
			}
			// A signal written before the slot exists is never read.
			slotOnly := cfg
			slotOnly.Brokers = nil
			st, err := postgres.ReadStatus(cmd.Context(), slotOnly)
			if err != nil {
				return fmt.Errorf("cdc snapshot: %w", err)
			}
			if !st.SlotState.Exists {
				return fmt.Errorf("cdc snapshot: reader %s has no replication slot %s yet: start it with `loanflow cdc run --config %s` (its first start snapshots every table anyway)", st.Reader, st.Slot, cfgPath)
			}
			lsn, err := postgres.RequestSnapshot(cmd.Context(), cfg.DatabaseURL, tables)
			if err != nil {
				return fmt.Errorf("cdc snapshot: %w", err)
			}
			if !wait {
				fmt.Fprintf(cmd.OutOrStdout(), "snapshot of %s requested at %s; the reader starts it when it reaches the request in the WAL\n", strings.Join(tables, ", "), lsn)
				return nil
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			// The progress goes to stdout, or to stderr when stdout carries JSON.
			progressOut := cmd.OutOrStdout()
			if out.json() {
				progressOut = cmd.ErrOrStderr()
			}
			sw := &snapshotWatch{tables: tables, request: lsn, start: time.Now(), interval: interval,
				w: progressOut, tty: isTerminal(progressOut), last: map[string]snapTableProgress{}}
			sw.note(fmt.Sprintf("snapshot of %s requested at %s; waiting for the reader to reach it", strings.Join(tables, ", "), lsn))
			err = postgres.WatchPositions(ctx, cfg, sw.update)
			sw.finish()
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) && timeout > 0 {
					return fmt.Errorf("cdc snapshot: not done after --timeout %s (the snapshot goes on; is `loanflow cdc run` running? follow it with `loanflow cdc status`)", timeout)
				}
				if errors.Is(err, context.Canceled) {
					return errors.New("cdc snapshot: interrupted: stopped following; the snapshot goes on (follow it with `loanflow cdc status`)")
				}
				return fmt.Errorf("cdc snapshot: following the reader's position: %w", err)
			}
			sum := sw.summary()
			var failed []string
			for _, t := range sum.Tables {
				if t.Error != "" {
					failed = append(failed, t.Table+": "+t.Error)
				}
			}
			if out.json() {
				if err := out.write(cmd.OutOrStdout(), sum, nil); err != nil {
					return err
				}
			} else {
				for _, t := range sum.Tables {
					if t.Error == "" {
						fmt.Fprintf(cmd.OutOrStdout(), "%s: done, %d rows read in %d chunks (%d written; the others changed meanwhile and came from the stream) in %s\n",
							t.Table, t.Rows, t.Chunks, t.Written, time.Duration(t.Seconds*float64(time.Second)).Round(time.Millisecond))
					}
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("cdc snapshot: not snapshotted: %s", strings.Join(failed, "; "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "config file (YAML or JSON)")
	cmd.Flags().StringArrayVar(&tables, "table", nil, "table to snapshot (schema.table; repeatable)")
	cmd.Flags().BoolVar(&wait, "wait", true, "follow the snapshot until every table is read (false: only write the request)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "stop following after this long (0: never); the snapshot goes on")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "at most one progress line per interval when stdout is not a terminal")
	out.register(cmd)
	return cmd
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// snapTableProgress is a table's progress as the reader's position has it.
type snapTableProgress struct {
	state                   string // waiting, queued, reading, done
	read, written, chunks   int64
	estimate                int64
	started, updated, ended time.Time // seen reading first (done: the reader's clock), last change, finished
	startRead               int64     // rows read when seen reading first
	err                     string
}

// SnapshotSummary is the final `cdc snapshot --output json`.
type SnapshotSummary struct {
	Request string              `json:"request_lsn"`
	Tables  []SnapshotTableDone `json:"tables"`
}

// SnapshotTableDone is one table's outcome.
type SnapshotTableDone struct {
	Table string `json:"table"`
	// Rows read (the table's rows at its chunks' times), Written those
	// written as snapshot reads (the others changed inside their chunk's
	// window: the stream carries their newer image).
	Rows          int64   `json:"rows"`
	Written       int64   `json:"written"`
	Chunks        int64   `json:"chunks"`
	Seconds       float64 `json:"seconds"`
	RowsPerSecond float64 `json:"rows_per_second"`
	Error         string  `json:"error,omitempty"`
}

// snapshotWatch turns the positions WatchPositions reads into progress.
type snapshotWatch struct {
	tables   []string
	request  pglogrepl.LSN
	start    time.Time
	interval time.Duration
	w        io.Writer
	tty      bool
	last     map[string]snapTableProgress
	printed  time.Time
	line     string // last line written (terminal)
	key      string // stateKey of the last line written (not a terminal)
	barShown bool
}

// update takes one committed position; it returns true when every table
// is done.
func (s *snapshotWatch) update(p postgres.Position) bool {
	now := time.Now()
	done := 0
	for _, t := range s.tables {
		prev := s.last[t]
		cur := prev
		if c, ok := p.Completed[t]; ok && c.Request >= s.request {
			if prev.state != "done" {
				cur = snapTableProgress{state: "done", read: c.Read, written: c.Rows, chunks: c.Chunks, estimate: c.Read,
					started: c.Started, ended: c.Finished, updated: now, err: c.Error}
			}
		} else if inc := p.Incremental; inc != nil && inc.Requested[t] >= s.request {
			switch {
			case inc.Table == t:
				cur.state, cur.read, cur.written, cur.chunks, cur.estimate = "reading", inc.Read, inc.Rows, inc.Chunks, inc.Estimate
				if prev.state != "reading" {
					cur.started, cur.startRead = now, inc.Read
				}
			case slices.Contains(inc.Queue, t):
				cur.state = "queued"
			}
		}
		if cur.state == "" {
			cur.state = "waiting"
		}
		if cur != prev {
			cur.updated = now
			s.last[t] = cur
		}
		if cur.state == "done" {
			done++
		}
	}
	s.render(now, done == len(s.tables))
	return done == len(s.tables)
}

// progressLine describes the table being read (or the state of all).
func (s *snapshotWatch) progressLine(now time.Time) string {
	var parts []string
	for _, t := range s.tables {
		pr := s.last[t]
		switch pr.state {
		case "reading":
			est := max(pr.estimate, pr.read)
			pct := 0.0
			if est > 0 {
				pct = float64(pr.read) / float64(est)
			}
			rate := 0.0
			if el := now.Sub(pr.started).Seconds(); el > 0 {
				rate = float64(pr.read-pr.startRead) / el
			}
			eta := "?"
			if rate > 0 {
				eta = (time.Duration(float64(est-pr.read)/rate) * time.Second).Round(time.Second).String()
			}
			bar := ""
			if s.tty {
				const width = 24
				n := int(pct * width)
				bar = "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "] "
			}
			estText := strconv.FormatInt(est, 10)
			if est == 0 {
				estText, eta = "?", "?"
			}
			parts = append(parts, fmt.Sprintf("%s %s%3.0f%% rows %d/%s chunks %d rate %.0f rows/s ETA %s",
				t, bar, pct*100, pr.read, estText, pr.chunks, rate, eta))
		case "done":
			if pr.err != "" {
				parts = append(parts, fmt.Sprintf("%s failed: %s", t, pr.err))
			} else {
				parts = append(parts, fmt.Sprintf("%s done rows %d/%d chunks %d", t, pr.read, pr.read, pr.chunks))
			}
		default:
			parts = append(parts, t+" "+pr.state)
		}
	}
	return strings.Join(parts, " | ")
}

func (s *snapshotWatch) render(now time.Time, final bool) {
	line := s.progressLine(now)
	if s.tty {
		if line != s.line || final {
			fmt.Fprintf(s.w, "\r\033[K%s", line)
			s.barShown, s.line = true, line
		}
		return
	}
	// A line per change of the figures (not of the rate alone).
	key := s.stateKey()
	if key == s.key || (!final && now.Sub(s.printed) < s.interval) {
		return
	}
	fmt.Fprintln(s.w, line)
	s.key, s.printed = key, now
}

// note writes a message on its own line.
func (s *snapshotWatch) note(msg string) {
	if s.tty && s.barShown {
		fmt.Fprint(s.w, "\r\033[K")
	}
	fmt.Fprintln(s.w, msg)
	s.barShown = false
}

// finish ends the bar's line.
func (s *snapshotWatch) finish() {
	if s.tty && s.barShown {
		fmt.Fprintln(s.w)
		s.barShown = false
	}
}

func (s *snapshotWatch) summary() SnapshotSummary {
	sum := SnapshotSummary{Request: s.request.String()}
	for _, t := range s.tables {
		pr := s.last[t]
		d := SnapshotTableDone{Table: t, Rows: pr.read, Written: pr.written, Chunks: pr.chunks, Error: pr.err}
		if !pr.ended.IsZero() && !pr.started.IsZero() {
			d.Seconds = pr.ended.Sub(pr.started).Seconds()
			if d.Seconds > 0 {
				d.RowsPerSecond = float64(pr.read) / d.Seconds
			}
		}
		sum.Tables = append(sum.Tables, d)
	}
	return sum
}

// stateKey is the figures of every table, without rate and ETA.
func (s *snapshotWatch) stateKey() string {
	var b strings.Builder
	for _, t := range s.tables {
		pr := s.last[t]
		fmt.Fprintf(&b, "%s %s %d %d %d %s;", t, pr.state, pr.read, pr.chunks, pr.estimate, pr.err)
	}
	return b.String()
}
