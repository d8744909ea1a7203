package main

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/api/pii"
)

func init() { addCommand(newKeysCmd) }

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Manage the PII encryption and blind-index keysets"}
	var k keyFlags
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the local KEK (local-kms only) and the PII keysets if missing",
		RunE: func(c *cobra.Command, _ []string) error {
			cfg := k.config()
			if err := pii.Init(c.Context(), cfg); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "keysets ready: %s, %s (wrapped by %s)\n", cfg.DataKeysetPath, cfg.IndexKeysetPath, cfg.KEKURI)
			return nil
		},
	}
	k.register(initCmd)
	var r keyFlags
	var index bool
	var dsn string
	var batch int
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Add a new primary data key (and with --index a new blind-index key); with --database-url, re-encrypt and re-index the customers under them",
		Long: `Adds a new AES-256-GCM key to the data keyset and makes it the primary;
with --index, also a new HMAC-SHA256 PRF key to the blind-index keyset.
Running API servers pick the keys up within their keys reload interval;
data under earlier keys stays readable. With --database-url, every
customer's PII is then re-encrypted under the new data key and its SSN
blind index recomputed under the new index key, in batches of --batch
rows with progress (re-running resumes: rows already under the primary
keys are skipped). Run it after the API servers have reloaded the keys.`,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg := r.config()
			out := c.OutOrStdout()
			id, err := pii.Rotate(c.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "new primary data key %d in %s\n", id, cfg.DataKeysetPath)
			if index {
				iid, err := pii.RotateIndex(c.Context(), cfg)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "new primary blind-index key %d in %s\n", iid, cfg.IndexKeysetPath)
			}
			if dsn == "" {
				fmt.Fprintln(out, "existing rows keep their keys; re-encrypt them with --database-url")
				return nil
			}
			keys, err := pii.Open(c.Context(), cfg)
			if err != nil {
				return err
			}
			pool, err := pgxpool.New(c.Context(), dsn)
			if err != nil {
				return fmt.Errorf("connecting to PostgreSQL: %w", err)
			}
			defer pool.Close()
			p, err := api.Rekey(c.Context(), pool, keys, batch, func(p api.RekeyProgress) {
				fmt.Fprintf(out, "rekey: %d/%d customers scanned, %d re-encrypted, %d re-indexed\n", p.Scanned, p.Total, p.Reencrypted, p.Reindexed)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "rekey done: %d customers, %d re-encrypted, %d re-indexed\n", p.Scanned, p.Reencrypted, p.Reindexed)
			return nil
		},
	}
	rotate.Flags().BoolVar(&index, "index", false, "also rotate the blind-index keyset")
	rotate.Flags().StringVar(&dsn, "database-url", "", "re-encrypt and re-index the customers in this database")
	rotate.Flags().IntVar(&batch, "batch", 500, "customers per re-encryption transaction")
	r.register(rotate)
	cmd.AddCommand(initCmd, rotate)
	return cmd
}
