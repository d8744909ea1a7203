package apibench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRawClient checks the load generator's HTTP/1.1 client against
// net/http's server: what the server received is what was sent (method,
// path with query, headers, body), responses of every framing are read
// whole, and connections are reused unless the server closes them.
func TestRawClient(t *testing.T) {
	type seen struct {
		method, uri, auth, ifMatch, body string
		contentLength                    int64
	}
	var mu sync.Mutex
	var got []seen
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, seen{r.Method, r.RequestURI, r.Header.Get("Authorization"), r.Header.Get("If-Match"), string(b), r.ContentLength})
		mu.Unlock()
		switch r.URL.Path {
		case "/chunked":
			w.Write([]byte("part one, "))
			w.(http.Flusher).Flush() // forces chunked framing
			w.Write([]byte("part two"))
		case "/close":
			w.Header().Set("Connection", "close")
			w.Write([]byte("bye"))
		case "/missing":
			http.Error(w, "no such thing", http.StatusNotFound)
		default:
			w.Write([]byte("echo:" + string(b)))
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	rc, err := newRawClient(srv.URL, 4, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	status, out, err := rc.do(ctx, "GET", "/v1/credit-profiles/c1?purpose=ACCOUNT_REVIEW", []string{"Authorization", "Bearer tok"}, "")
	if err != nil || status != 200 || string(out) != "echo:" {
		t.Fatalf("GET: %d %q %v", status, out, err)
	}
	status, out, err = rc.do(ctx, "PATCH", "/v1/loans/l1", []string{"Authorization", "Bearer tok", "If-Match", `"7"`}, `{"balance":"12.34"}`)
	if err != nil || status != 200 || string(out) != `echo:{"balance":"12.34"}` {
		t.Fatalf("PATCH: %d %q %v", status, out, err)
	}
	status, out, err = rc.do(ctx, "GET", "/chunked", nil, "")
	if err != nil || status != 200 || string(out) != "part one, part two" {
		t.Fatalf("chunked: %d %q %v", status, out, err)
	}
	status, out, err = rc.do(ctx, "GET", "/missing", nil, "")
	if err != nil || status != 404 || !strings.Contains(string(out), "no such thing") {
		t.Fatalf("404: %d %q %v", status, out, err)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("four requests one after another used %d connections, want 1 (kept alive)", n)
	}
	mu.Lock()
	want := []seen{
		{"GET", "/v1/credit-profiles/c1?purpose=ACCOUNT_REVIEW", "Bearer tok", "", "", 0},
		{"PATCH", "/v1/loans/l1", "Bearer tok", `"7"`, `{"balance":"12.34"}`, 19},
	}
	for i, w := range want {
		if got[i] != w {
			t.Errorf("request %d: the server saw %+v, want %+v", i, got[i], w)
		}
	}
	mu.Unlock()

	// A response asking to close its connection: the next request dials.
	if status, out, err = rc.do(ctx, "GET", "/close", nil, ""); err != nil || string(out) != "bye" {
		t.Fatalf("close: %d %q %v", status, out, err)
	}
	if _, _, err = rc.do(ctx, "GET", "/", nil, ""); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("after Connection: close, %d connections in all, want 2", n)
	}
	if n := rc.resent.Load(); n != 0 {
		t.Fatalf("%d requests resent; a closed connection must not go back to the pool", n)
	}

	// The server closes the idle connection: a GET is sent again on a
	// new one; a PATCH is not (it may have been applied).
	srv.CloseClientConnections()
	if status, out, err = rc.do(ctx, "GET", "/", nil, ""); err != nil || status != 200 {
		t.Fatalf("GET after the server closed the idle connection: %d %q %v", status, out, err)
	}
	if n := rc.resent.Load(); n != 1 {
		t.Fatalf("%d requests resent, want 1 (the GET whose idle connection was closed)", n)
	}
	if _, _, err = rc.do(ctx, "GET", "/", nil, ""); err != nil { // back in the idle list
		t.Fatal(err)
	}
	srv.CloseClientConnections()
	if _, _, err = rc.do(ctx, "PATCH", "/", nil, "{}"); err == nil {
		t.Fatal("a PATCH on a connection the server had closed succeeded; want its error (no resend)")
	}

	// Concurrent requests each get their own connection and answer.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := strings.Repeat("x", i)
			_, out, err := rc.do(ctx, "PATCH", "/", nil, body)
			if err == nil && string(out) != "echo:"+body {
				err = errors.New("answer " + string(out) + " for body " + body)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(rc.idle) > 4 {
		t.Fatalf("%d idle connections kept, want at most 4", len(rc.idle))
	}
	if n := rc.resent.Load(); n != 1 {
		t.Fatalf("%d requests resent in all, want 1", n)
	}
}

// TestRawClientConcurrentRequestsOwnTheirConnections: requests in flight
// together each have a connection of their own (no pipelining, which
// would hide a request's wait behind the one before it).
func TestRawClientConcurrentRequestsOwnTheirConnections(t *testing.T) {
	release := make(chan struct{})
	var inHandler, conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inHandler.Add(1)
		<-release
		w.Write([]byte(r.URL.Path))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	rc, err := newRawClient(srv.URL, 8, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := "/r" + strings.Repeat("x", i)
			if _, out, err := rc.do(context.Background(), "GET", p, nil, ""); err != nil || string(out) != p {
				errs <- fmt.Errorf("%s: %q %v", p, out, err)
			}
		}()
	}
	for inHandler.Load() < 8 { // every request reached the server before any answer
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := conns.Load(); n != 8 {
		t.Fatalf("8 requests in flight together used %d connections, want 8", n)
	}
}

// TestRawClientRefusesWhatWouldDesynchronize: answers that would leave
// bytes of another answer on a kept connection (an interim 1xx answer,
// bytes after the body) fail or close the connection, so no later
// request reads an earlier request's answer as its own.
func TestRawClientRefusesWhatWouldDesynchronize(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Each connection answers its first request with script[i] (i counts
	// connections), then every later request with "fresh".
	script := []string{
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirststale",
	}
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			i := int(n.Add(1)) - 1
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for k := 0; ; k++ {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					answer := "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
					if k == 0 && i < len(script) {
						answer = script[i]
					}
					if _, err := c.Write([]byte(answer)); err != nil {
						return
					}
				}
			}()
		}
	}()
	rc, err := newRawClient("http://"+ln.Addr().String(), 4, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if status, out, err := rc.do(ctx, "GET", "/", nil, ""); err == nil {
		t.Fatalf("an interim 103 answer was taken as final: %d %q", status, out)
	}
	if len(rc.idle) != 0 {
		t.Fatal("the connection with the final answer still unread went back to the pool")
	}
	if _, out, err := rc.do(ctx, "GET", "/", nil, ""); err != nil || string(out) != "first" {
		t.Fatalf("second connection: %q %v", out, err)
	}
	if _, out, err := rc.do(ctx, "GET", "/", nil, ""); err != nil || string(out) != "fresh" {
		t.Fatalf("after an answer followed by stray bytes, the next request got %q %v, want its own answer (a new connection)", out, err)
	}
}

// TestRawClientStopsOnCancel: cancelling the request's context ends its
// wait at once, not at the timeout.
func TestRawClientStopsOnCancel(t *testing.T) {
	addr, accepted := silentServer(t)
	rc, err := newRawClient("http://"+addr, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := rc.do(ctx, "GET", "/", nil, "")
		done <- err
	}()
	<-accepted // the request is past its dial, waiting for an answer
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a cancelled request succeeded")
		}
	case <-time.After(time.Minute): // an outer bound only: the timeout is an hour
		t.Fatal("a cancelled request still waits")
	}
}

// silentServer accepts connections and never answers; accepted receives
// one value per connection accepted. It closes with the test.
func silentServer(t *testing.T) (addr string, accepted <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan struct{}, 16)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case acc <- struct{}{}:
			default:
			}
		}
	}()
	return ln.Addr().String(), acc
}

// TestRawClientTimesOut: a server that never answers fails the request
// after the client's timeout instead of hanging the generator.
func TestRawClientTimesOut(t *testing.T) {
	addr, _ := silentServer(t)
	rc, err := newRawClient("http://"+addr, 1, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = rc.do(context.Background(), "GET", "/", nil, "")
	if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("want a timeout, got %v", err)
	}
	if n := rc.resent.Load(); n != 0 {
		t.Fatalf("a request that timed out was resent %d times", n)
	}
}

// TestRawClientNoResendAfterTimeoutOnReusedConnection: a GET on a kept
// connection whose answer does not come in time fails; it is not sent
// again (it may be under way in the server).
func TestRawClientNoResendAfterTimeoutOnReusedConnection(t *testing.T) {
	var calls atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) >= 2 {
			<-release // answers only after the client gave up
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	defer close(release) // before srv.Close, which waits for the handlers
	rc, err := newRawClient(srv.URL, 1, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := rc.do(context.Background(), "GET", "/", nil, ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rc.do(context.Background(), "GET", "/", nil, ""); err == nil {
		t.Fatal("a GET answered after the timeout succeeded")
	}
	if n := calls.Load(); n > 2 {
		t.Fatalf("the server got %d requests, want 2 (no resend after a timeout)", n)
	}
	if n := rc.resent.Load(); n != 0 {
		t.Fatalf("resent %d", n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
