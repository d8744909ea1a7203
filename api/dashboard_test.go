package api

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/loanflow/loanflow/internal/testenv"
)

func chromiumPath(t *testing.T) string {
	for _, p := range []string{os.Getenv("LOANFLOW_CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser"} {
		if p == "" {
			continue
		}
		if full, err := exec.LookPath(p); err == nil {
			return full
		}
	}
	if testenv.InCI() {
		t.Fatal("chromium not found: install it with `apt-get install -y chromium` (make deps) or set LOANFLOW_CHROMIUM")
	}
	t.Skip("chromium not found; install it with `apt-get install -y chromium`")
	return ""
}

// artifactsDir is where the dashboard screenshot goes (gitignored).
func artifactsDir(t *testing.T) string {
	d := os.Getenv("LOANFLOW_ARTIFACTS_DIR")
	if d == "" {
		d = filepath.Join("..", "testdata", "artifacts")
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDashboardInChromium signs in to the lender dashboard in headless
// Chromium and checks that its numbers change as metric and decision
// records arrive on their topics.
func TestDashboardInChromium(t *testing.T) {
	bin := chromiumPath(t)
	e := newEnv(t)
	e.lender("bank-ui")
	r := e.do("POST", "/v1/admin/clients", e.admin, NewClient{ClientID: "bank-ui-dash", LenderID: "bank-ui", Scopes: []string{"portfolio:read"}})
	var creds ClientCredentials
	r.json(t, &creds)
	dec, met, _ := e.avro()
	start := time.Now().UTC().Truncate(time.Minute)
	e.produce(e.cfg.MetricsTopic, metricRecord(t, met, "bank-ui", start, 3, "4500.00"))
	e.produce(e.cfg.MetricsTopic, metricRecord(t, met, "bank-other", start, 99, "1.00"))

	opts := append(chromedp.DefaultExecAllocatorOptions[:0:0],
		chromedp.ExecPath(bin), chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun, chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	err := chromedp.Run(ctx,
		chromedp.Navigate(e.url+"/dashboard"),
		chromedp.WaitVisible("#client_id", chromedp.ByID),
		chromedp.SendKeys("#client_id", creds.ClientID, chromedp.ByID),
		chromedp.SendKeys("#client_secret", creds.ClientSecret, chromedp.ByID),
		chromedp.Click("#signin", chromedp.ByID),
		chromedp.WaitVisible("#originations", chromedp.ByID),
	)
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
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
	var png []byte
	if err := chromedp.Run(ctx, chromedp.FullScreenshot(&png, 100)); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(artifactsDir(t), "dashboard.png")
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(png))
}

func waitText(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	var got string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if err := chromedp.Run(ctx, chromedp.Text(sel, &got, chromedp.ByQuery)); err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		if strings.TrimSpace(got) == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s shows %q, want %q", sel, got, want)
}

// waitAttr waits until sel's data-values attribute is want.
func waitAttr(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	var got string
	var ok bool
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if err := chromedp.Run(ctx, chromedp.AttributeValue(sel, "data-values", &got, &ok, chromedp.ByQuery)); err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		if got == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s data-values %q, want %q", sel, got, want)
}

func decisionLatencyText(t *testing.T, ctx context.Context) string {
	t.Helper()
	var s string
	if err := chromedp.Run(ctx, chromedp.Text("#latency_p50", &s, chromedp.ByID)); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(s)
}
