package webtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"

	"github.com/loanflow/loanflow/internal/testenv"
)

// WaitTimeout bounds every wait for a page condition: a bound for a stuck
// page, not a speed assertion (the machine may be loaded).
var WaitTimeout = 90 * time.Second

// Chromium returns the Chromium binary: $LOANFLOW_CHROMIUM, chromium or
// chromium-browser. Without one the test fails under CI=true and is
// skipped otherwise, with how to install it.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("LOANFLOW_CHROMIUM"), "chromium", "chromium-browser"} {
		if p == "" {
			continue
		}
		if full, err := exec.LookPath(p); err == nil {
			return full
		}
	}
	const hint = "chromium not found: install it with `make deps` (apt-get install -y chromium) or set LOANFLOW_CHROMIUM"
	if testenv.InCI() {
		t.Fatal(hint)
	}
	t.Skip(hint)
	return ""
}

// Browser is one headless Chromium process; each Tab is an isolated
// browser context (its own cookies), so two sessions can run side by side.
type Browser struct {
	alloc context.Context
	root  context.Context
}

// New starts headless Chromium for the test; it is stopped when the test
// ends.
func New(t testing.TB) *Browser {
	t.Helper()
	bin := Chromium(t)
	// Not t.TempDir: Chromium's helper processes may still write to the
	// profile as the browser stops, and TempDir's removal would then fail
	// the test.
	profile, err := os.MkdirTemp("", "loanflow-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:0:0],
		chromedp.ExecPath(bin), chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun, chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("hide-scrollbars", true),
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(profile), chromedp.WindowSize(1280, 900))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	root, cancelRoot := chromedp.NewContext(alloc)
	if err := chromedp.Run(root); err != nil { // starts the browser
		cancelRoot()
		cancelAlloc()
		_ = os.RemoveAll(profile)
		t.Fatalf("starting chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelRoot()
		cancelAlloc()
		_ = os.RemoveAll(profile)
	})
	return &Browser{alloc: alloc, root: root}
}

// Tab opens a tab in a fresh browser context (its own cookies), 1280x900;
// both are closed when the test ends.
func (b *Browser) Tab(t testing.TB) context.Context {
	t.Helper()
	// chromedp's WithNewBrowserContext opens its tab without a window,
	// which Chromium refuses ("no browser is open") once the context has
	// none: create the context and a tab in a new window here, and attach.
	var bc cdp.BrowserContextID
	var id target.ID
	Run(t, b.root, "opening a browser context", chromedp.ActionFunc(func(ctx context.Context) error {
		exec := cdp.WithExecutor(ctx, chromedp.FromContext(ctx).Browser)
		var err error
		if bc, err = target.CreateBrowserContext().Do(exec); err != nil {
			return err
		}
		id, err = target.CreateTarget("about:blank").WithBrowserContextID(bc).WithNewWindow(true).Do(exec)
		return err
	}))
	ctx, cancel := chromedp.NewContext(b.root, chromedp.WithTargetID(id))
	t.Cleanup(func() {
		cancel()
		c, stop := context.WithTimeout(b.root, 10*time.Second)
		defer stop()
		_ = chromedp.Run(c, chromedp.ActionFunc(func(ctx context.Context) error {
			return target.DisposeBrowserContext(bc).Do(cdp.WithExecutor(ctx, chromedp.FromContext(ctx).Browser))
		}))
	})
	Run(t, ctx, "opening a tab", Viewport(1280, 900))
	return ctx
}

// Viewport sets the tab's viewport (CSS pixels).
func Viewport(w, h int64) chromedp.Action {
	return emulation.SetDeviceMetricsOverride(w, h, 1, false)
}

// Run runs actions in the tab, failing the test with what it was doing.
func Run(t testing.TB, ctx context.Context, doing string, actions ...chromedp.Action) {
	t.Helper()
	if err := chromedp.Run(ctx, actions...); err != nil {
		t.Fatalf("%s: %v\npage: %s", doing, err, pageText(ctx))
	}
}

// WaitFor waits until the JavaScript expression is truthy, re-evaluating
// it in the page every 200ms, up to WaitTimeout. A navigation under way
// (a form posted, a redirect) restarts the wait in the new document.
func WaitFor(t testing.TB, ctx context.Context, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for {
		var ok bool
		err := chromedp.Run(ctx, chromedp.Poll(expr, &ok, chromedp.WithPollingInterval(200*time.Millisecond),
			chromedp.WithPollingTimeout(time.Until(deadline))))
		if err == nil {
			return
		}
		if !navigated(err) || time.Now().After(deadline) {
			t.Fatalf("waiting for %s (%s): %v\npage: %s", what, expr, err, pageText(ctx))
		}
	}
}

// navigated reports whether err says the document went away under an
// evaluation.
func navigated(err error) bool {
	s := err.Error()
	return strings.Contains(s, "navigated or closed") || strings.Contains(s, "context was destroyed") ||
		strings.Contains(s, "Cannot find context")
}

// Eval evaluates a JavaScript expression into res.
func Eval(t testing.TB, ctx context.Context, expr string, res any) {
	t.Helper()
	Run(t, ctx, "evaluating "+expr, chromedp.Evaluate(expr, res))
}

// Text is the trimmed text of the first element matching the CSS
// selector, "" when there is none.
func Text(t testing.TB, ctx context.Context, sel string) string {
	t.Helper()
	var s string
	Eval(t, ctx, fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, sel), &s)
	return strings.TrimSpace(s)
}

// pageText is the page's location and visible text, cut, for failures.
func pageText(ctx context.Context) string {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var s string
	if err := chromedp.Run(c, chromedp.Evaluate(`location.href + "\n" + (document.body ? document.body.innerText : "")`, &s)); err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	if len(s) > 3000 {
		s = s[:3000] + "…"
	}
	return s
}

// Screenshot saves a full-page PNG as an artifact (for a person to look
// at; tests check layout through geometry, see Layout) and returns its path.
func Screenshot(t testing.TB, ctx context.Context, name string) string {
	t.Helper()
	var png []byte
	Run(t, ctx, "taking a screenshot", chromedp.FullScreenshot(&png, 100))
	path := filepath.Join(ArtifactsDir(t), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%d bytes)", path, len(png))
	return path
}

// ArtifactsDir is $LOANFLOW_ARTIFACTS_DIR, else $LOANFLOW_TEST_LOGS, else
// testdata/artifacts at the module root (gitignored).
func ArtifactsDir(t testing.TB) string {
	t.Helper()
	d := os.Getenv("LOANFLOW_ARTIFACTS_DIR")
	if d == "" {
		d = os.Getenv("LOANFLOW_TEST_LOGS")
	}
	if d == "" {
		d = filepath.Join(moduleRoot(), "testdata", "artifacts")
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func moduleRoot() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}
