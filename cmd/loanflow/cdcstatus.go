package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/connectors/postgres"
)

func newCDCStatusCmd() *cobra.Command {
	var (
		cfgPath, dsn, name string
		brokers            []string
		out                outputFlag
	)
	cmd := &cobra.Command{
		Use:   "status (--config FILE | --database-url URL [--brokers HOST:PORT] [--name NAME]) [--output table|json]",
		Short: "Show the reader's slot (active, lag, retained WAL, safe_wal_size, wal_status) and committed position",
		Long: "Reads the slot from pg_replication_slots and the position the reader committed in Kafka (its last commit, " +
			"snapshot progress if one runs), without disturbing a running reader. With --config the reader's config file " +
			"gives the database, brokers and name; --database-url, --brokers and --name override it or stand alone.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return fmt.Errorf("cdc status: %w", err)
			}
			var cfg postgres.Config
			if cfgPath != "" {
				var err error
				if cfg, err = postgres.LoadConfig(cfgPath); err != nil {
					return err
				}
			}
			if dsn != "" {
				cfg.DatabaseURL = dsn
			}
			if len(brokers) > 0 {
				cfg.Brokers = brokers
			}
			if name != "" {
				cfg.Name = name
			}
			if cfg.DatabaseURL == "" {
				return errors.New("cdc status: --config FILE or --database-url URL is required")
			}
			st, err := postgres.ReadStatus(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("cdc status: %w", err)
			}
			return out.write(cmd.OutOrStdout(), st, func(tw *tabwriter.Writer) { cdcStatusTable(tw, st) })
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "the reader's config file (YAML or JSON)")
	cmd.Flags().StringVar(&dsn, "database-url", "", "PostgreSQL URL (overrides the config's database_url)")
	cmd.Flags().StringSliceVar(&brokers, "brokers", nil, "Kafka seed brokers, to read the committed position (overrides the config's)")
	cmd.Flags().StringVar(&name, "name", "", "reader name (overrides the config's; default loanflow_cdc)")
	out.register(cmd)
	return cmd
}

func cdcStatusTable(tw *tabwriter.Writer, st postgres.Status) {
	s := st.SlotState
	row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
	row("READER", st.Reader)
	row("SLOT", st.Slot)
	if !s.Exists {
		row("SLOT STATE", "missing (no such slot in this database)")
	} else {
		active := "no"
		if s.Active {
			active = fmt.Sprintf("yes (walsender pid %d)", s.ActivePID)
		}
		row("ACTIVE", active)
		row("WAL STATUS", s.WALStatus)
		row("LAG", fmt.Sprintf("%s (server WAL %s, confirmed %s)", humanBytes(s.LagBytes), s.CurrentWALLSN, s.ConfirmedFlushLSN))
		row("RETAINED WAL", fmt.Sprintf("%s (restart_lsn %s)", humanBytes(s.RetainedBytes), s.RestartLSN))
		safe := "unlimited (max_slot_wal_keep_size -1)"
		if s.SafeWALBytes != nil {
			safe = humanBytes(*s.SafeWALBytes)
		}
		row("SAFE WAL SIZE", safe)
	}
	if st.Position == nil {
		row("POSITION", st.PositionError)
		return
	}
	p := st.Position
	row("POSITION", fmt.Sprintf("flush %s, last transaction %s", p.FlushLSN, p.LSN))
	if st.BytesBehindPosition != nil {
		row("NOT YET IN KAFKA", humanBytes(*st.BytesBehindPosition))
	}
	if st.LastCommit != nil {
		row("LAST COMMIT", fmt.Sprintf("%s (%s ago)", st.LastCommit.Format(time.RFC3339), time.Since(*st.LastCommit).Round(time.Second)))
	}
	switch {
	case p.Snapshot != nil:
		row("SNAPSHOT", fmt.Sprintf("initial, in progress: %d rows committed, table %s, done: %s", p.Snapshot.Rows, p.Snapshot.Table, strings.Join(p.Snapshot.Done, ", ")))
	case p.Incremental != nil && (p.Incremental.Table != "" || len(p.Incremental.Queue) > 0):
		row("SNAPSHOT", fmt.Sprintf("incremental, in progress: table %s (%d of ~%d rows read, %d chunks), queued: %s",
			p.Incremental.Table, p.Incremental.Read, max(p.Incremental.Estimate, p.Incremental.Read), p.Incremental.Chunks, strings.Join(p.Incremental.Queue, ", ")))
	default:
		row("SNAPSHOT", fmt.Sprintf("complete (%d tables)", len(p.Tables)))
	}
}

// humanBytes prints n in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
