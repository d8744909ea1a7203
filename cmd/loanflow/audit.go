package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/api/audit"
)

func init() { addCommand(newAuditCmd) }

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Inspect the hash-chained audit log"}
	var dsn string
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Walk the audit hash chain and name the first broken row",
		RunE: func(c *cobra.Command, _ []string) error {
			if dsn == "" {
				return errors.New("--database-url (or DATABASE_URL) is required")
			}
			pool, err := pgxpool.New(c.Context(), dsn)
			if err != nil {
				return fmt.Errorf("connecting to PostgreSQL: %w", err)
			}
			defer pool.Close()
			rep, err := audit.Verify(c.Context(), pool)
			if err != nil {
				return err
			}
			if !rep.OK {
				return fmt.Errorf("audit chain broken at row seq=%d: %s (%d rows checked)", rep.BrokenSeq, rep.Reason, rep.Rows)
			}
			fmt.Fprintf(c.OutOrStdout(), "audit chain intact: %d rows\n", rep.Rows)
			return nil
		},
	}
	verify.Flags().StringVar(&dsn, "database-url", os.Getenv("DATABASE_URL"), "PostgreSQL DSN (env DATABASE_URL)")
	cmd.AddCommand(verify)
	return cmd
}
