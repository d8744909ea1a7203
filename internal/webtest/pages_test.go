package webtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/devstack"
	"github.com/loanflow/loanflow/internal/devstack/devtest"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
	. "github.com/loanflow/loanflow/internal/webtest"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestPagesInChromium runs the local stack (every job, the API, the
// bureau simulator) and drives both web pages in headless Chromium:
//   - two lenders sign in to their dashboards side by side; an application
//     submitted through the API shows up on its lender's page, decided as
//     the API says, without a reload, and never on the other lender's;
//   - the operator signs in and sees a card per job of the stack, updated
//     live; a lender opening the operator page (and the operator opening a
//     dashboard) gets a 403 page that names the session;
//   - both pages lay their cards out in a grid on a desktop viewport and in
//     one column on a phone's, nothing overlapping or overflowing;
//   - sign-out ends the session.
func TestPagesInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole local stack")
	}
	requireServers(t)
	br := New(t) // skips (locally) before the stack starts when chromium is missing
	info := startDev(t)
	ops := newClient(t, info.APIURL, info.Admin.ClientID, info.Admin.ClientSecret)
	run := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff)
	a := newLender(t, ops, "web-a-"+run)
	b := newLender(t, ops, "web-b-"+run)

	pageA, pageB := br.Tab(t), br.Tab(t)
	signIn(t, pageA, info.APIURL+"/dashboard", a.creds)
	signIn(t, pageB, info.APIURL+"/dashboard", b.creds)
	for _, p := range []struct {
		ctx context.Context
		l   lender
	}{{pageA, a}, {pageB, b}} {
		WaitFor(t, p.ctx, "the dashboard's stream", `document.getElementById("status").textContent === "live"`)
		WaitFor(t, p.ctx, "the lender's name", fmt.Sprintf(`document.getElementById("lender").textContent === %q`, p.l.id))
		markPage(t, p.ctx)
	}

	// Live decisions, per lender.
	appA := a.submit(t)
	decA := a.awaitDecision(t, appA)
	waitRow(t, pageA, appA, decA)
	appB := b.submit(t)
	decB := b.awaitDecision(t, appB)
	waitRow(t, pageB, appB, decB)
	for _, p := range []context.Context{pageA, pageB} {
		checkNotReloaded(t, p)
	}
	// Tenant isolation: each page has its own application (the check
	// that finds it is the one that must not find the other's) and its
	// own lender's name only.
	if body := Text(t, pageB, "body"); strings.Contains(body, appA) || strings.Contains(body, a.id) {
		t.Errorf("lender %s's dashboard shows lender %s's application %s or name", b.id, a.id, appA)
	}
	if body := Text(t, pageA, "body"); strings.Contains(body, appB) || strings.Contains(body, b.id) {
		t.Errorf("lender %s's dashboard shows lender %s's application %s or name", a.id, b.id, appB)
	}
	if got := Text(t, pageA, "#decision_count"); got != "1" {
		t.Errorf("lender %s's dashboard counts %s decisions, want its 1", a.id, got)
	}
	CheckGrid(t, pageA, ".grid .card", 1280, 900, 4)
	CheckGrid(t, pageA, ".grid .card", 390, 844, 1)
	Run(t, pageA, "resizing", Viewport(1280, 900))
	Screenshot(t, pageA, "dashboard")

	// The operator page.
	op := br.Tab(t)
	signIn(t, op, info.APIURL+"/operator", info.Admin)
	for _, j := range devstack.Jobs {
		WaitFor(t, op, "the card of job "+j, fmt.Sprintf(`!!document.querySelector('.job[data-job=%q]')`, j))
	}
	WaitFor(t, op, "a checkpoint of every job", `[...document.querySelectorAll(".job dd[data-k=checkpoint_age]")].every(e => e.textContent.endsWith(" ago"))`)
	WaitFor(t, op, "the bureau breaker on the decisions card", `(document.querySelector('.job[data-job="decisions"] dd[data-k=bureau]') || {}).textContent === "closed"`)
	if n := count(t, op, ".job"); n != len(devstack.Jobs) {
		t.Errorf("%d job cards, want one per job (%d)", n, len(devstack.Jobs))
	}
	var lag string
	Eval(t, op, `document.querySelector('.job[data-job="decisions"] dd[data-k=lag]').textContent`, &lag)
	if lag == "unknown" || strings.HasPrefix(lag, "-") {
		t.Errorf("decisions lag %q, want a count", lag)
	}
	markPage(t, op)
	updated := Text(t, op, "#updated")
	WaitFor(t, op, "a live update", fmt.Sprintf(`document.getElementById("updated").textContent !== %q`, updated))
	checkNotReloaded(t, op)
	CheckGrid(t, op, ".job", 1280, 900, len(devstack.Jobs))
	CheckGrid(t, op, ".job", 390, 844, 1)
	checkLayoutCheckerFails(t, op)
	Run(t, op, "resizing", Viewport(1280, 900))
	Screenshot(t, op, "operator")

	// Each session on the other's page: a 403 page naming it.
	Run(t, pageA, "opening the operator page as a lender", chromedp.Navigate(info.APIURL+"/operator"))
	WaitFor(t, pageA, "the 403 page", `!!document.getElementById("forbidden")`)
	if got := Text(t, pageA, "#lender"); got != a.id {
		t.Errorf("the 403 page names lender %q, want %q", got, a.id)
	}
	if n := count(t, pageA, "a#own[href='/dashboard']"); n != 1 {
		t.Error("the 403 page does not lead the lender to its dashboard")
	}
	Run(t, op, "opening a dashboard as the operator", chromedp.Navigate(info.APIURL+"/dashboard"))
	WaitFor(t, op, "the 403 page", `!!document.getElementById("forbidden")`)

	// A session revoked under an open page: when its stream is refused,
	// the page says the session ended (instead of reconnecting forever),
	// and the next page load goes to sign-in with a note.
	Run(t, pageA, "reopening the dashboard", chromedp.Navigate(info.APIURL+"/dashboard"))
	WaitFor(t, pageA, "the dashboard's stream", `document.getElementById("status").textContent === "live"`)
	ops.call(t, "POST", "/v1/admin/clients/"+a.creds.ClientID+"/revoke", nil, nil, http.StatusOK)
	awaitSessionEnded(t, pageA)
	Run(t, pageA, "reloading the dashboard", chromedp.Navigate(info.APIURL+"/dashboard"))
	WaitFor(t, pageA, "the expired-session note", `location.search.includes("error=expired") && !document.getElementById("expired").hidden`)

	// Sign-out.
	Run(t, pageB, "signing out", chromedp.Click("#signout", chromedp.ByID))
	WaitFor(t, pageB, "the signed-out note", `location.search.includes("signedout") && !document.getElementById("signedout").hidden`)
	Run(t, pageB, "reopening the dashboard", chromedp.Navigate(info.APIURL+"/dashboard"))
	WaitFor(t, pageB, "the sign-in form", `!!document.getElementById("client_id")`)
}

// awaitSessionEnded reconnects the dashboard's stream (as a dropped
// connection would) until the server refuses it (a revocation takes up
// to the API's RevocationStaleness to be seen) and checks the page then
// says the session ended.
func awaitSessionEnded(t *testing.T, ctx context.Context) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for time.Now().Before(deadline) {
		var shown bool
		Eval(t, ctx, `(() => { if ($("alert").style.display === "block") return true;
			if (es.readyState === EventSource.OPEN) { es.close(); connect(); } return false; })()`, &shown)
		if shown {
			if got := Text(t, ctx, "#status"); got != "signed out" || !strings.Contains(Text(t, ctx, "#alert"), "session expired") {
				t.Errorf("after the revocation: status %q, alert %q", got, Text(t, ctx, "#alert"))
			}
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("the dashboard never said its revoked session ended\npage: %s", Text(t, ctx, "body"))
}

// checkLayoutCheckerFails is the layout check's negative control: a card
// whose content is wider than itself, and one pushed over another, are
// found.
func checkLayoutCheckerFails(t *testing.T, ctx context.Context) {
	t.Helper()
	var ok bool
	Eval(t, ctx, `(() => { const d = document.createElement("div"); d.id = "wide"; d.textContent = "x";
		d.style.width = "3000px"; document.querySelector(".job").appendChild(d); return true; })()`, &ok)
	if g := Layout(t, ctx, ".job"); !strings.Contains(strings.Join(g.Problems, ";"), "overflows") {
		t.Errorf("the layout check missed a card's overflowing content: %+v", g)
	}
	Eval(t, ctx, `(() => { document.getElementById("wide").remove(); const c = document.querySelectorAll(".job");
		c[1].style.marginTop = "-" + (c[1].getBoundingClientRect().top - c[0].getBoundingClientRect().top + 10) + "px";
		c[1].style.marginLeft = "-" + (c[1].getBoundingClientRect().left - c[0].getBoundingClientRect().left + 10) + "px"; return true; })()`, &ok)
	if g := Layout(t, ctx, ".job"); !strings.Contains(strings.Join(g.Problems, ";"), "overlaps") {
		t.Errorf("the layout check missed overlapping cards: %+v", g)
	}
	Run(t, ctx, "reloading", chromedp.Reload())
}

// markPage leaves a mark in the page's JavaScript state that a reload
// would wipe.
func markPage(t *testing.T, ctx context.Context) {
	t.Helper()
	var ok bool
	Eval(t, ctx, `window.loanflowTestMark = true`, &ok)
}

func checkNotReloaded(t *testing.T, ctx context.Context) {
	t.Helper()
	var marked bool
	Eval(t, ctx, `window.loanflowTestMark === true`, &marked)
	if !marked {
		t.Error("the page reloaded to show the update (its JavaScript state is gone)")
	}
}

func count(t *testing.T, ctx context.Context, sel string) int {
	t.Helper()
	var n int
	Eval(t, ctx, fmt.Sprintf(`document.querySelectorAll(%q).length`, sel), &n)
	return n
}

// signIn fills the sign-in form the page shows without a session.
func signIn(t *testing.T, ctx context.Context, page string, c api.ClientCredentials) {
	t.Helper()
	Run(t, ctx, "signing in to "+page,
		chromedp.Navigate(page),
		chromedp.WaitVisible("#client_id", chromedp.ByID),
		chromedp.SendKeys("#client_id", c.ClientID, chromedp.ByID),
		chromedp.SendKeys("#client_secret", c.ClientSecret, chromedp.ByID),
		chromedp.Click("#signin", chromedp.ByID))
	WaitFor(t, ctx, "the page after signing in", `!document.getElementById("client_id") && document.readyState === "complete"`)
}

// waitRow waits for the dashboard's row of application id and checks the
// decision it shows against the API's.
func waitRow(t *testing.T, ctx context.Context, id string, d api.Decision) {
	t.Helper()
	row := fmt.Sprintf(`[...document.querySelectorAll("#decisions tr")].find(r => r.cells[0].textContent === %q)`, id)
	WaitFor(t, ctx, "the row of application "+id, "!!"+row)
	var cells []string
	Eval(t, ctx, fmt.Sprintf(`[...%s.cells].map(c => c.textContent)`, row), &cells)
	if len(cells) < 4 || cells[1] != d.Decision || cells[3] != fmt.Sprint(d.Score) {
		t.Errorf("row of %s: %q, want decision %s and score %d as the API answered", id, cells, d.Decision, d.Score)
	}
}

// lender is a lender with a point-of-sale client that may also read its
// portfolio (and so sign in to the dashboard).
type lender struct {
	id    string
	creds api.ClientCredentials
	c     *client
}

func newLender(t *testing.T, ops *client, id string) lender {
	t.Helper()
	ops.call(t, "POST", "/v1/admin/lenders", api.NewLender{LenderID: id, Name: "Lender " + id}, nil, http.StatusCreated)
	var creds api.ClientCredentials
	ops.call(t, "POST", "/v1/admin/clients", api.NewClient{ClientID: id + "-pos", LenderID: id,
		Scopes: []string{"applications:write", "portfolio:read"}}, &creds, http.StatusCreated)
	return lender{id: id, creds: creds, c: newClient(t, ops.base, creds.ClientID, creds.ClientSecret)}
}

// submit sends an application of a new applicant (decided on the bureau's
// report) and returns its id.
func (l lender) submit(t *testing.T) string {
	t.Helper()
	var accepted struct {
		ApplicationID string `json:"application_id"`
	}
	body := map[string]any{"pos_terminal_id": "pos-web-1", "amount": "900.00", "currency": "USD",
		"applicant": map[string]string{"name": "Web Applicant", "ssn": fmt.Sprintf("5%02d-%02d-%04d", time.Now().Nanosecond()%100, time.Now().Nanosecond()%97+1, time.Now().Nanosecond()%9999+1)}}
	l.c.call(t, "POST", "/v1/loan-applications", body, &accepted, http.StatusAccepted)
	return accepted.ApplicationID
}

// awaitDecision long-polls the API for the application's decision.
func (l lender) awaitDecision(t *testing.T, id string) api.Decision {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for time.Now().Before(deadline) {
		var d api.Decision
		if st := l.c.call(t, "GET", "/v1/loan-applications/"+id+"/decision?timeout=20s", nil, &d, 0); st == http.StatusOK {
			return d
		}
	}
	t.Fatalf("application %s not decided within %s", id, WaitTimeout)
	return api.Decision{}
}

// client calls the API with a client's token.
type client struct {
	base, token string
	hc          *http.Client
}

func newClient(t *testing.T, base, id, secret string) *client {
	t.Helper()
	c := &client{base: base, hc: &http.Client{Timeout: time.Minute}}
	req, _ := http.NewRequest(http.MethodPost, base+"/oauth/token", strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if st := c.do(t, req, &tok); st != http.StatusOK {
		t.Fatalf("token for %s: %d", id, st)
	}
	c.token = tok.AccessToken
	return c
}

// call sends body as JSON and decodes the answer into out; want (unless 0)
// is the status it must have.
func (c *client) call(t *testing.T, method, path string, body, out any, want int) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	st := c.do(t, req, out)
	if want != 0 && st != want {
		t.Fatalf("%s %s: %d, want %d", method, path, st, want)
	}
	return st
}

func (c *client) do(t *testing.T, req *http.Request, out any) int {
	t.Helper()
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode < 300 && out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", req.Method, req.URL.Path, err, b)
		}
	}
	return resp.StatusCode
}

// requireServers skips (locally) or fails (CI) when the server binaries
// the local stack starts are missing.
func requireServers(t *testing.T) {
	t.Helper()
	_, pgErr := localsvc.PostgresBinDir()
	_, redisErr := localsvc.RedisBinary()
	if err := errors.Join(pgErr, redisErr); err != nil {
		if testenv.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// startDev runs the local stack on free ports until the test ends.
func startDev(t *testing.T) devstack.Info {
	t.Helper()
	info, _ := devtest.Start(t, testenv.Dir(t, "web"), bureau.Config{LatencyMin: 10 * time.Millisecond, LatencyMax: 50 * time.Millisecond})
	return info
}
