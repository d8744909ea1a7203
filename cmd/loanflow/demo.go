package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/api"
)

func init() { addCommand(newDemoCmd) }

// demoConfig configures `loanflow demo`.
type demoConfig struct {
	apiURL, credentials, lender string
	timeout                     time.Duration
}

func newDemoCmd() *cobra.Command {
	var cfg demoConfig
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Send loan applications through a running stack and print the decisions",
		Long: `Walks through Loanflow end to end against a running stack (loanflow dev):
with the admin client it creates a lender, a point-of-sale client of that
lender and two customers (their rows reach the decisions job through CDC and
customer_360); then, as the lender, it submits three applications (two known
customers, one unknown applicant decided through the credit bureau) and
long-polls their decisions.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := runDemo(cmd.Context(), cfg, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.apiURL, "api", envOr("LOANFLOW_API_URL", "http://127.0.0.1:8080"), "API base URL (env LOANFLOW_API_URL)")
	f.StringVar(&cfg.credentials, "credentials", filepath.Join(envOr("LOANFLOW_DEV_DIR", filepath.Join(".loanflow", "dev")), "admin-client.json"),
		"admin client credentials file written by loanflow dev")
	f.StringVar(&cfg.lender, "lender", "demo-bank", "lender the demo acts for (created if missing)")
	f.DurationVar(&cfg.timeout, "timeout", 60*time.Second, "how long to wait for each decision")
	return cmd
}

// demoDecision is one application of the demo and its decision.
type demoDecision struct {
	Who      string
	Known    bool
	Amount   string
	Decision api.Decision
	Latency  time.Duration // from submission to the decision's arrival
}

func runDemo(ctx context.Context, cfg demoConfig, out io.Writer) ([]demoDecision, error) {
	admin, err := readAdminCredentials(cfg.credentials)
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(cfg.apiURL, "/")
	hc := &http.Client{Timeout: cfg.timeout + 10*time.Second}
	op, err := login(ctx, hc, base, admin.ClientID, admin.ClientSecret)
	if err != nil {
		return nil, err
	}
	run := randomHex(4)

	// The lender, its point-of-sale client and two customers.
	if err := ensureLender(ctx, op, api.NewLender{LenderID: cfg.lender, Name: "Demo Bank"}); err != nil {
		return nil, err
	}
	lender, err := newPOSClient(ctx, op, cfg.lender, "demo-pos-"+run)
	if err != nil {
		return nil, err
	}
	// The lender onboards both (a lender reaches only its own customers'
	// credit data, and an application naming a customer carries that
	// customer's SSN).
	alice := api.NewCustomer{CustomerID: "cust-" + run + "-alice", Name: "Alice Demo", SSN: randomSSN(), CreditLimit: "20000.00", RiskTier: "LOW", Score: 780, LenderID: cfg.lender}
	bob := api.NewCustomer{CustomerID: "cust-" + run + "-bob", Name: "Bob Demo", SSN: randomSSN(), CreditLimit: "1000.00", RiskTier: "HIGH", Score: 560, LenderID: cfg.lender}
	for _, c := range []api.NewCustomer{alice, bob} {
		if err := op.call(ctx, "POST", "/v1/customers", c, nil); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(out, "lender %s, point-of-sale client %s (secret %s: shown once; revoke with loanflow admin clients revoke %s)\ncustomers %s (LOW risk, score 780, limit 20000.00) and %s (HIGH risk, score 560, limit 1000.00)\n\n",
		cfg.lender, lender.id, lender.secret, lender.id, alice.CustomerID, bob.CustomerID)

	type application struct {
		who      string
		customer *string
		name     string
		ssn      string
		amount   string
	}
	apps := []application{
		{who: alice.CustomerID, customer: &alice.CustomerID, name: alice.Name, ssn: alice.SSN, amount: "1500.00"},
		{who: bob.CustomerID, customer: &bob.CustomerID, name: bob.Name, ssn: bob.SSN, amount: "5000.00"},
		{who: "new applicant", name: "Carol Newcomer", ssn: randomSSN(), amount: "800.00"},
	}
	ids := make([]string, len(apps))
	sent := make([]time.Time, len(apps))
	for i, a := range apps {
		body := map[string]any{"pos_terminal_id": "pos-demo-1", "amount": a.amount, "currency": "USD",
			"applicant": map[string]string{"name": a.name, "ssn": a.ssn}}
		if a.customer != nil {
			body["customer_id"] = *a.customer
		}
		var accepted struct {
			ApplicationID string `json:"application_id"`
		}
		sent[i] = time.Now()
		if err := lender.call(ctx, "POST", "/v1/loan-applications", body, &accepted); err != nil {
			return nil, err
		}
		ids[i] = accepted.ApplicationID
	}
	var results []demoDecision
	for i, a := range apps {
		d, err := lender.awaitDecision(ctx, ids[i], cfg.timeout)
		if err != nil {
			return results, err
		}
		results = append(results, demoDecision{Who: a.who, Known: a.customer != nil, Amount: a.amount, Decision: d, Latency: time.Since(sent[i])})
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APPLICATION\tAPPLICANT\tAMOUNT\tDECISION\tBASIS\tSCORE\tREASONS\tWAITED")
	for i, r := range results {
		reasons := strings.Join(r.Decision.ReasonCodes, ",")
		if reasons == "" {
			reasons = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s USD\t%s\t%s\t%d\t%s\t%s\n", ids[i], r.Who, r.Amount, r.Decision.Decision, r.Decision.Basis,
			r.Decision.Score, reasons, r.Latency.Round(10*time.Millisecond))
	}
	if err := tw.Flush(); err != nil {
		return results, err
	}
	fmt.Fprintf(out, "\nportfolio: %s/dashboard (sign in with %s)\n", base, lender.id)
	return results, nil
}

// awaitDecision long-polls an application's decision.
func (c *apiClient) awaitDecision(ctx context.Context, id string, limit time.Duration) (api.Decision, error) {
	deadline := time.Now().Add(limit)
	for {
		wait := min(time.Until(deadline), 30*time.Second).Round(time.Second)
		if wait < time.Second {
			return api.Decision{}, fmt.Errorf("no decision for application %s after %s: are the decisions job and the bureau running (`loanflow job status decisions`)?", id, limit)
		}
		resp, err := c.do(ctx, http.MethodGet, "/v1/loan-applications/"+id+"/decision?timeout="+wait.String(), nil)
		if err != nil {
			return api.Decision{}, err
		}
		switch resp.status {
		case http.StatusOK:
			var d api.Decision
			return d, json.Unmarshal(resp.body, &d)
		case http.StatusAccepted: // still pending
		default:
			return api.Decision{}, fmt.Errorf("decision of %s: HTTP %d: %s", id, resp.status, strings.TrimSpace(string(resp.body)))
		}
		if ctx.Err() != nil {
			return api.Decision{}, errors.Join(ctx.Err(), fmt.Errorf("waiting for the decision of %s", id))
		}
	}
}
