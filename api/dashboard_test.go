package api

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/loanflow/loanflow/internal/webtest"
)

// TestDashboardInChromium signs in to the lender dashboard in headless
// Chromium and checks that its numbers change as metric and decision
// records arrive on their topics.
func TestDashboardInChromium(t *testing.T) {
	e := newEnv(t)
	e.lender("bank-ui")
	r := e.do("POST", "/v1/admin/clients", e.admin, NewClient{ClientID: "bank-ui-dash", LenderID: "bank-ui", Scopes: []string{"portfolio:read"}})
	var creds ClientCredentials
	r.json(t, &creds)
	dec, met, _ := e.avro()
	start := time.Now().UTC().Truncate(time.Minute)
	e.produce(e.cfg.MetricsTopic, metricRecord(t, met, "bank-ui", start, 3, "4500.00"))
	e.produce(e.cfg.MetricsTopic, metricRecord(t, met, "bank-other", start, 99, "1.00"))

	ctx := webtest.New(t).Tab(t)
	webtest.Run(t, ctx, "signing in",
		chromedp.Navigate(e.url+"/dashboard"),
		chromedp.WaitVisible("#client_id", chromedp.ByID),
		chromedp.SendKeys("#client_id", creds.ClientID, chromedp.ByID),
		chromedp.SendKeys("#client_secret", creds.ClientSecret, chromedp.ByID),
		chromedp.Click("#signin", chromedp.ByID),
	)
	webtest.WaitFor(t, ctx, "the dashboard", `!!document.getElementById("originations")`)
	var emptyShown bool
	waitText(t, ctx, "#originations", "3")
	if err := chromedp.Run(ctx, chromedp.Evaluate(`getComputedStyle(document.getElementById("empty")).display !== "none"`, &emptyShown)); err != nil || emptyShown {
		t.Fatalf("the empty-state note still shows after a window arrived (%v)", err)
	}
	waitText(t, ctx, "#outstanding_balance", "4500.00 USD")
	waitText(t, ctx, "#status", "live")

	// Live updates: a newer window and two decisions arrive.
	e.produce(e.cfg.MetricsTopic, metricRecord(t, met, "bank-ui", start.Add(time.Minute), 7, "12000.50"))
	waitText(t, ctx, "#originations", "7")
	waitText(t, ctx, "#outstanding_balance", "12000.50 USD")
	waitText(t, ctx, "#approval_rate", "7.0")
	// Charts over time: one point per window, as the test produced them.
	waitAttr(t, ctx, "#chart-originations", "3,7")
	waitText(t, ctx, "#range-originations", "2 windows · 3 – 7")
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-ui-1", "bank-ui", "APPROVED", 741),
		decisionRecord(t, dec, "app-ui-2", "bank-ui", "DECLINED", 580), decisionRecord(t, dec, "app-x", "bank-other", "APPROVED", 800))
	waitText(t, ctx, "#decision_count", "2")
	if lat := decisionLatencyText(t, ctx); !strings.HasSuffix(lat, " ms") {
		t.Fatalf("latency p50 shows %q, want a figure in ms", lat)
	}
	var table string
	if err := chromedp.Run(ctx, chromedp.Text("#decisions", &table, chromedp.ByID)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table, "app-ui-1") || !strings.Contains(table, "DECLINED") || strings.Contains(table, "app-x") {
		t.Fatalf("decision table: %q", table)
	}
	// The other lender's window (99 originations) never shows.
	if body := webtest.Text(t, ctx, "body"); strings.Contains(body, "bank-other") {
		t.Errorf("the dashboard shows another lender's data: %q", body)
	}
	webtest.Screenshot(t, ctx, "dashboard-api")
}

func waitText(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	webtest.WaitFor(t, ctx, sel+" showing "+want, fmt.Sprintf(`((document.querySelector(%q) || {}).textContent || "").trim() === %q`, sel, want))
}

// waitAttr waits until sel's data-values attribute is want.
func waitAttr(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	webtest.WaitFor(t, ctx, sel+" plotting "+want, fmt.Sprintf(`(document.querySelector(%q) || {dataset: {}}).dataset.values === %q`, sel, want))
}

func decisionLatencyText(t *testing.T, ctx context.Context) string {
	t.Helper()
	var s string
	if err := chromedp.Run(ctx, chromedp.Text("#latency_p50", &s, chromedp.ByID)); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(s)
}
