package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loanflow/loanflow/api"
)

// The API client of `loanflow demo` and `loanflow load`: OAuth2 client
// credentials, JSON calls, and the admin calls that set up a lender.

// apiClient calls the API with the bearer token of one OAuth2 client.
type apiClient struct {
	base       string
	id, secret string
	hc         *http.Client
	mu         sync.Mutex // guards token
	token      string
}

// newHTTPClient is an HTTP client for conns concurrent requests.
func newHTTPClient(timeout time.Duration, conns int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = conns, conns
	return &http.Client{Timeout: timeout, Transport: t}
}

// readAdminCredentials reads the operator client `loanflow dev` writes.
func readAdminCredentials(path string) (api.ClientCredentials, error) {
	var admin api.ClientCredentials
	raw, err := os.ReadFile(path)
	if err != nil {
		return admin, fmt.Errorf("reading the admin credentials: %w (start the stack with `loanflow dev`, or pass --credentials)", err)
	}
	if err := json.Unmarshal(raw, &admin); err != nil || admin.ClientID == "" || admin.ClientSecret == "" {
		return admin, fmt.Errorf("%s holds no client_id and client_secret", path)
	}
	return admin, nil
}

// login gets an access token with the client-credentials grant.
func login(ctx context.Context, hc *http.Client, base, id, secret string) (*apiClient, error) {
	c := &apiClient{base: strings.TrimRight(base, "/"), id: id, secret: secret, hc: hc}
	return c, c.refresh(ctx)
}

// refresh gets a new access token (after a 401: expired, or the dev
// issuer restarted with new keys).
func (c *apiClient) refresh(ctx context.Context) error {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {c.id}, "client_secret": {c.secret}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/oauth/token", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("reaching the API at %s: %w (is `loanflow dev` running? pass --api otherwise)", c.base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &tok) != nil || tok.AccessToken == "" {
		return fmt.Errorf("token for client %s: %s: %s", c.id, resp.Status, strings.TrimSpace(string(b)))
	}
	c.mu.Lock()
	c.token = tok.AccessToken
	c.mu.Unlock()
	return nil
}

// maxRateLimitWaits bounds how often call waits out a 429.
const maxRateLimitWaits = 30

// call sends body as JSON and decodes a 2xx answer into out; statuses in
// ok (e.g. 409 for something that exists) are accepted too. A 429, or a
// 503 with Retry-After (the request was refused before it was handled),
// is retried after its Retry-After.
func (c *apiClient) call(ctx context.Context, method, path string, body, out any, ok ...int) error {
	for attempt := 0; ; attempt++ {
		resp, err := c.do(ctx, method, path, body)
		if err != nil {
			return err
		}
		if retryable(resp) && attempt < maxRateLimitWaits {
			if err := sleepCtx(ctx, resp.retryAfter()); err != nil {
				return err
			}
			continue
		}
		return resp.decode(method, path, out, ok)
	}
}

// retryable reports whether the server refused a request before handling
// it and said when to try again: a 429, or a 503 with Retry-After (the
// stack is still starting, or the broker is briefly away).
func retryable(r apiResponse) bool {
	return r.status == http.StatusTooManyRequests || r.status == http.StatusServiceUnavailable && r.header.Get("Retry-After") != ""
}

// apiResponse is a response read whole.
type apiResponse struct {
	status int
	header http.Header
	body   []byte
}

func (r apiResponse) decode(method, path string, out any, ok []int) error {
	if r.status/100 == 2 {
		if out != nil {
			return json.Unmarshal(r.body, out)
		}
		return nil
	}
	for _, s := range ok {
		if r.status == s {
			return nil
		}
	}
	return fmt.Errorf("%s %s: HTTP %d: %s", method, path, r.status, strings.TrimSpace(string(r.body)))
}

// retryAfter is the Retry-After header, 1s when absent, at most 10s.
func (r apiResponse) retryAfter() time.Duration {
	s, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || s < 1 {
		s = 1
	}
	return time.Duration(min(s, 10)) * time.Second
}

// problemType is the type slug of a problem+json answer ("rate-limited"),
// or "" when the body is not one.
func (r apiResponse) problemType() string {
	var p struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(r.body, &p) != nil {
		return ""
	}
	return p.Type[strings.LastIndexByte(p.Type, '/')+1:]
}

func (c *apiClient) do(ctx context.Context, method, path string, body any) (apiResponse, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return apiResponse{}, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return apiResponse{}, err
	}
	c.mu.Lock()
	req.Header.Set("Authorization", "Bearer "+c.token)
	c.mu.Unlock()
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return apiResponse{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return apiResponse{status: resp.StatusCode, header: resp.Header, body: b}, err
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// posScopes are the scopes of a lender's point-of-sale client.
var posScopes = []string{"applications:write", "loans:write", "credit:read", "portfolio:read"}

// ensureLender creates the lender unless it exists.
func ensureLender(ctx context.Context, op *apiClient, l api.NewLender) error {
	return op.call(ctx, "POST", "/v1/admin/lenders", l, nil, http.StatusConflict)
}

// newPOSClient creates a point-of-sale client of lender and logs in as it.
func newPOSClient(ctx context.Context, op *apiClient, lender, clientID string) (*apiClient, error) {
	var pos api.ClientCredentials
	if err := op.call(ctx, "POST", "/v1/admin/clients", api.NewClient{ClientID: clientID, LenderID: lender, Scopes: posScopes}, &pos); err != nil {
		return nil, err
	}
	return login(ctx, op.hc, op.base, pos.ClientID, pos.ClientSecret)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// randomSSN returns nine digits in the shape NNN-NN-NNNN, never starting
// with 000, 666 or 9 (numbers the SSA does not issue).
func randomSSN() string {
	n, _ := rand.Int(rand.Reader, big.NewInt(665_000_000))
	v := n.Int64() + 1_000_000 // area 001..665
	s := fmt.Sprintf("%09d", v)
	return s[:3] + "-" + s[3:5] + "-" + s[5:]
}
