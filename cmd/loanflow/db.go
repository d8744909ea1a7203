package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/api/migrations"
)

func init() { addCommand(newDBCmd) }

var roleName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func newDBCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "db", Short: "Manage the PostgreSQL schema"}
	var dsn, role string
	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the database migrations as the schema owner; with --api-role, create the API's login role in loanflow_api",
		Long: `Applies the migrations with --database-url, which must name the schema's
owner. With --api-role NAME it then creates NAME as a login role in
loanflow_api if it does not exist (the API's least-privileged role: it owns
nothing, so it cannot alter or disable the audit tables' triggers, and it
writes audit rows only through the audit functions), and sets its password
from LOANFLOW_API_DB_PASSWORD when that is set. Run the API with
--database-url naming that role and --migrate=false.`,
		RunE: func(c *cobra.Command, _ []string) error {
			if dsn == "" {
				return errors.New("--database-url (or DATABASE_URL) is required: the schema owner's DSN")
			}
			v, err := migrations.Up(c.Context(), dsn)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "schema at version %d\n", v)
			if role == "" {
				return nil
			}
			if !roleName.MatchString(role) {
				return fmt.Errorf("--api-role %q: use lower-case letters, digits and underscores", role)
			}
			conn, err := pgx.Connect(c.Context(), dsn)
			if err != nil {
				return fmt.Errorf("connecting to PostgreSQL: %w", err)
			}
			defer conn.Close(c.Context())
			var owner bool
			if err := conn.QueryRow(c.Context(), "SELECT $1 = current_user OR EXISTS (SELECT 1 FROM pg_tables WHERE tableowner = $1)", role).Scan(&owner); err != nil {
				return err
			}
			if owner {
				return fmt.Errorf("--api-role %s is the schema owner or owns tables: the API's role must own nothing", role)
			}
			if _, err := conn.Exec(c.Context(), `DO $$ BEGIN
				IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '`+role+`') THEN
					CREATE ROLE `+role+` LOGIN IN ROLE loanflow_api;
				END IF; END $$`); err != nil {
				return fmt.Errorf("creating the role %s: %w", role, err)
			}
			if _, err := conn.Exec(c.Context(), "GRANT loanflow_api TO "+role); err != nil {
				return fmt.Errorf("granting loanflow_api to %s: %w", role, err)
			}
			if pw := os.Getenv("LOANFLOW_API_DB_PASSWORD"); pw != "" {
				var stmt string
				if err := conn.QueryRow(c.Context(), "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", role, pw).Scan(&stmt); err != nil {
					return err
				}
				if _, err := conn.Exec(c.Context(), stmt); err != nil {
					return fmt.Errorf("setting the password of %s: %w", role, err)
				}
			}
			fmt.Fprintf(c.OutOrStdout(), "API role %s ready (member of loanflow_api, owns nothing)\n", role)
			return nil
		},
	}
	f := migrate.Flags()
	f.StringVar(&dsn, "database-url", os.Getenv("DATABASE_URL"), "the schema owner's PostgreSQL DSN (env DATABASE_URL)")
	f.StringVar(&role, "api-role", "", "create this login role in loanflow_api for the API (password from env LOANFLOW_API_DB_PASSWORD)")
	cmd.AddCommand(migrate)
	return cmd
}
