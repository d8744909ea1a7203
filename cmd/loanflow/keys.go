package main

import (
	"fmt"

	"github.com/spf13/cobra"

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
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Add a new primary AES-256-GCM key; older keys stay so existing ciphertexts decrypt",
		Long: `Adds a new AES-256-GCM key to the data keyset and makes it the primary.
Running API servers pick it up within their keys reload interval; data
encrypted under earlier keys stays readable.`,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg := r.config()
			id, err := pii.Rotate(c.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "new primary key %d in %s\n", id, cfg.DataKeysetPath)
			return nil
		},
	}
	r.register(rotate)
	cmd.AddCommand(initCmd, rotate)
	return cmd
}
