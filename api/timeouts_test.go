package api

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSlowBodyIsCutOff (issue 9, Medium 7): an unauthenticated request
// that announces a 100-byte body and never sends it does not hold its
// connection: the server closes it once ReadTimeout (1s here) has passed.
// The client waits up to 30s for the close (a condition, not a timing
// assertion; the server without ReadTimeout never closes).
func TestSlowBodyIsCutOff(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ReadTimeout = time.Second })
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /v1/loans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	_, err = br.ReadByte() // blocks until the server closes the connection
	var ne net.Error
	if err == nil || (errorAs(err, &ne) && ne.Timeout()) {
		t.Fatalf("connection still open 30s after a body that never came (%v)", err)
	}
}

func errorAs(err error, target *net.Error) bool {
	ne, ok := err.(net.Error)
	if ok {
		*target = ne
	}
	return ok
}

// TestPerLenderStreamCaps (issue 9, Medium 7): one lender holding its cap
// of SSE streams and long-polls gets 503 for one more, while another
// lender still opens streams and long-polls; streams outlive ReadTimeout
// and the write timeout (they lift their deadlines).
func TestPerLenderStreamCaps(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.MaxStreamsPerLender, c.MaxLongPollsPerLender = 2, 1
		c.ReadTimeout, c.RequestTimeout = time.Second, time.Second
	})
	a := e.lender("bank-a")
	b := e.lender("bank-b")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func(tok string) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/decisions/stream", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var held []*http.Response
	for i := 0; i < 2; i++ {
		r := open(a)
		if r.StatusCode != 200 {
			t.Fatalf("bank-a stream %d: %d", i, r.StatusCode)
		}
		held = append(held, r)
	}
	if r := open(a); r.StatusCode != 503 {
		t.Fatalf("bank-a's third stream: %d, want 503", r.StatusCode)
	}
	rb := open(b)
	if rb.StatusCode != 200 {
		t.Fatalf("bank-b's stream while bank-a holds its cap: %d", rb.StatusCode)
	}
	// A held stream keeps delivering past ReadTimeout and the write
	// timeout (both 1s, + 5s): its first ping comes after 15s.
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(held[0].Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), ": ping") {
				line <- sc.Text()
				return
			}
		}
		line <- ""
	}()
	if l := <-line; l == "" {
		t.Fatal("stream ended before its first ping (deadlines not lifted)")
	}

	// Long-polls: bank-a's one slot is taken by a waiting poll.
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/loan-applications/app-1/decision?timeout=30s", nil)
		req.Header.Set("Authorization", "Bearer "+a)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	waitFor(t, "bank-a's long-poll waiting", func() bool { return e.srv.lenderPolls.count("bank-a") == 1 })
	if r := e.do("GET", "/v1/loan-applications/app-2/decision?timeout=5s", a, nil); r.status != 503 {
		t.Fatalf("bank-a's second long-poll: %d %s", r.status, r.body)
	}
	// bank-b is not capped by bank-a's long-polls (app-3 is not bank-b's:
	// 404 unknown-application, not 503).
	if r := e.do("GET", "/v1/loan-applications/app-3/decision?timeout=1ms", b, nil); r.status != 404 {
		t.Fatalf("bank-b's long-poll: %d %s", r.status, r.body)
	}
	cancel()
	<-done
}
