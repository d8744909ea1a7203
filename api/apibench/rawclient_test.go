package apibench

import (
	"context"
	"errors"
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

	// The server closes the idle connection: a GET is sent again on a
	// new one; a PATCH is not (it may have been applied).
	srv.CloseClientConnections()
	if status, out, err = rc.do(ctx, "GET", "/", nil, ""); err != nil || status != 200 {
		t.Fatalf("GET after the server closed the idle connection: %d %q %v", status, out, err)
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
}

// TestRawClientTimesOut: a server that never answers fails the request
// after the client's timeout instead of hanging the generator.
func TestRawClientTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // read nothing, answer nothing
		}
	}()
	rc, err := newRawClient("http://"+ln.Addr().String(), 1, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = rc.do(context.Background(), "GET", "/", nil, "")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a timeout, got %v", err)
	}
}
