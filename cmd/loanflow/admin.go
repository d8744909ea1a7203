package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/api"
)

func init() { addCommand(newAdminCmd) }

// adminConn are the flags that reach the API as the operator client.
type adminConn struct {
	apiURL, credentials string
}

func (a *adminConn) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&a.apiURL, "api", envOr("LOANFLOW_API_URL", "http://127.0.0.1:8080"), "API base URL (env LOANFLOW_API_URL)")
	f.StringVar(&a.credentials, "credentials", filepath.Join(envOr("LOANFLOW_DEV_DIR", filepath.Join(".loanflow", "dev")), "admin-client.json"),
		"operator client credentials file (loanflow dev writes it)")
}

func (a adminConn) login(ctx context.Context) (*apiClient, error) {
	creds, err := readAdminCredentials(a.credentials)
	if err != nil {
		return nil, err
	}
	return login(ctx, &http.Client{Timeout: 30 * time.Second}, a.apiURL, creds.ClientID, creds.ClientSecret)
}

func newAdminCmd() *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Manage lenders and their API clients (as the operator client)",
		Long: `Creates, lists and revokes lenders and OAuth2 clients through the API's admin
routes, authenticated as the operator client whose credentials loanflow dev
writes (--credentials). A client's secret is printed once, when it is
created. Revoking a client stops it from getting new tokens (tokens it
holds expire with their lifetime); revoking a lender revokes all of its
clients.`,
	}
	conn.register(cmd)
	lenders := &cobra.Command{Use: "lenders", Short: "Create, list and revoke lenders"}
	lenders.AddCommand(newLenderCreateCmd(&conn), newLenderListCmd(&conn), newLenderRevokeCmd(&conn))
	clients := &cobra.Command{Use: "clients", Short: "Create, list and revoke OAuth2 clients"}
	clients.AddCommand(newClientCreateCmd(&conn), newClientListCmd(&conn), newClientRevokeCmd(&conn))
	cmd.AddCommand(lenders, clients)
	return cmd
}

func newLenderCreateCmd(conn *adminConn) *cobra.Command {
	var name string
	var rate float64
	var burst int
	cmd := &cobra.Command{
		Use:     "create LENDER_ID --name NAME",
		Short:   "Create a lender",
		Example: "  loanflow admin lenders create acme-bank --name 'Acme Bank'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			op, err := conn.login(cmd.Context())
			if err != nil {
				return err
			}
			l := api.NewLender{LenderID: args[0], Name: name}
			if rate > 0 {
				l.RateLimitPerSec = &rate
			}
			if burst > 0 {
				l.RateBurst = &burst
			}
			if err := op.call(cmd.Context(), "POST", "/v1/admin/lenders", l, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lender %s created; give it a point-of-sale client with: loanflow admin clients create CLIENT_ID --lender %s\n", args[0], args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the lender's display name (required)")
	cmd.Flags().Float64Var(&rate, "rate-limit", 0, "API requests per second for this lender (default: the server's)")
	cmd.Flags().IntVar(&burst, "rate-burst", 0, "burst of the rate limit (default: the server's)")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func newLenderListCmd(conn *adminConn) *cobra.Command {
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List lenders and how many clients each has",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			op, err := conn.login(cmd.Context())
			if err != nil {
				return err
			}
			var ls []api.Lender
			if err := op.call(cmd.Context(), "GET", "/v1/admin/lenders", nil, &ls); err != nil {
				return err
			}
			return out.write(cmd.OutOrStdout(), ls, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "LENDER\tNAME\tCLIENTS\tREVOKED\tRATE LIMIT\tCREATED")
				for _, l := range ls {
					rate := "default"
					if l.RateLimitPerSec != nil {
						rate = fmt.Sprintf("%g/s", *l.RateLimitPerSec)
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", l.LenderID, l.Name, l.Clients, l.RevokedClients, rate, l.CreatedAt.Format(time.RFC3339))
				}
			})
		},
	}
	out.register(cmd)
	return cmd
}

func newLenderRevokeCmd(conn *adminConn) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke LENDER_ID",
		Short: "Revoke every client of a lender",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			op, err := conn.login(cmd.Context())
			if err != nil {
				return err
			}
			var res struct {
				Revoked int `json:"revoked_clients"`
			}
			if err := op.call(cmd.Context(), "POST", "/v1/admin/lenders/"+url.PathEscape(args[0])+"/revoke", nil, &res); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lender %s: %d clients revoked\n", args[0], res.Revoked)
			return nil
		},
	}
}

func newClientCreateCmd(conn *adminConn) *cobra.Command {
	var lender, scopes string
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "create CLIENT_ID (--lender LENDER_ID | --scopes admin)",
		Short: "Create an OAuth2 client and print its secret (shown once)",
		Example: `  loanflow admin clients create acme-pos-1 --lender acme-bank
  loanflow admin clients create ops-2 --scopes admin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			op, err := conn.login(cmd.Context())
			if err != nil {
				return err
			}
			c := api.NewClient{ClientID: args[0], LenderID: lender, Scopes: splitList(scopes)}
			if len(c.Scopes) == 0 {
				if lender == "" {
					return fmt.Errorf("give --lender (a point-of-sale client) or --scopes (e.g. admin for an operator client)")
				}
				c.Scopes = posScopes
			}
			var creds api.ClientCredentials
			if err := op.call(cmd.Context(), "POST", "/v1/admin/clients", c, &creds); err != nil {
				return err
			}
			return out.write(cmd.OutOrStdout(), creds, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "client_id\t%s\nclient_secret\t%s\nlender\t%s\nscopes\t%s\n", creds.ClientID, creds.ClientSecret,
					orDash(creds.LenderID), strings.Join(creds.Scopes, " "))
				fmt.Fprintln(tw, "(the secret is shown only now)")
			})
		},
	}
	cmd.Flags().StringVar(&lender, "lender", "", "the lender the client acts for")
	cmd.Flags().StringVar(&scopes, "scopes", "", "scopes, comma-separated (default for a lender's client: "+strings.Join(posScopes, ",")+")")
	out.register(cmd)
	return cmd
}

func newClientListCmd(conn *adminConn) *cobra.Command {
	var lender string
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List OAuth2 clients (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			op, err := conn.login(cmd.Context())
			if err != nil {
				return err
			}
			path := "/v1/admin/clients"
			if lender != "" {
				path += "?lender_id=" + url.QueryEscape(lender)
			}
			var cs []api.Client
			if err := op.call(cmd.Context(), "GET", path, nil, &cs); err != nil {
				return err
			}
			return out.write(cmd.OutOrStdout(), cs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "CLIENT\tLENDER\tSCOPES\tREVOKED\tCREATED")
				for _, c := range cs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", c.ClientID, orDash(c.LenderID), strings.Join(c.Scopes, " "), c.Revoked, c.CreatedAt.Format(time.RFC3339))
				}
			})
		},
	}
	cmd.Flags().StringVar(&lender, "lender", "", "only this lender's clients")
	out.register(cmd)
	return cmd
}

func newClientRevokeCmd(conn *adminConn) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke CLIENT_ID",
		Short: "Revoke a client: it gets no new token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			op, err := conn.login(cmd.Context())
			if err != nil {
				return err
			}
			if err := op.call(cmd.Context(), "POST", "/v1/admin/clients/"+url.PathEscape(args[0])+"/revoke", nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "client %s revoked\n", args[0])
			return nil
		},
	}
}
