package apibench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// rawClient is the load generator's HTTP/1.1 client: keep-alive
// connections each used by the goroutine of the request it carries, which
// writes the request and reads the response itself. net/http's Transport
// hands every request to two goroutines of its connection (a write loop
// and a read loop), three goroutines and their wake-ups per request; on
// this 2-core machine, shared with the server, PostgreSQL and Redis, the
// generator paid for them in the latency it measured (its /healthz floor:
// p99 1.7-1.9 ms at 5,000/s with net/http). Responses are parsed by
// net/http's own http.ReadResponse (status line, headers, Content-Length
// or chunked bodies).
type rawClient struct {
	addr    string // host:port to dial
	host    string // the Host header
	timeout time.Duration
	idle    chan *rawConn
	resent  atomic.Int64 // GETs sent again after the server closed an idle connection
}

type rawConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

// newRawClient keeps up to maxIdle connections to base's host (http only,
// no path) and bounds every call by timeout.
func newRawClient(base string, maxIdle int, timeout time.Duration) (*rawClient, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("apibench: the load generator speaks plain HTTP/1.1, not %q", u.Scheme)
	}
	if strings.Trim(u.Path, "/") != "" {
		return nil, fmt.Errorf("apibench: the load generator's base URL %q has a path; give scheme://host:port", base)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &rawClient{addr: addr, host: u.Host, timeout: timeout, idle: make(chan *rawConn, max(maxIdle, 1))}, nil
}

// close closes the idle connections.
func (rc *rawClient) close() {
	for {
		select {
		case c := <-rc.idle:
			c.c.Close()
		default:
			return
		}
	}
}

// do sends one request and returns the response's status and body, within
// the client's timeout for the whole call (dial, write, read, resend) and
// ctx. A connection is reused only after a response read to its end, with
// nothing after it, that did not ask to close the connection. A GET whose
// reused connection turns out closed by the server (EOF, reset or broken
// pipe before any of the response) is sent once more on a new connection,
// as net/http does; a timeout is never resent.
func (rc *rawClient) do(ctx context.Context, method, path string, hdr []string, body string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, rc.timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	for attempt := 0; ; attempt++ {
		var c *rawConn
		reused := false
		if attempt == 0 {
			select {
			case c = <-rc.idle:
				reused = true
			default:
			}
		}
		if c == nil {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", rc.addr)
			if err != nil {
				return 0, nil, err
			}
			c = &rawConn{c: nc, br: bufio.NewReaderSize(nc, 8<<10), bw: bufio.NewWriterSize(nc, 4<<10)}
		}
		_ = c.c.SetDeadline(deadline)
		// A cancelled ctx ends the wait at once, not at the deadline.
		stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Now()) })
		status, out, keep, started, err := c.roundTrip(rc.host, method, path, hdr, body)
		stopped := stop()
		if err != nil || !keep || !stopped || c.br.Buffered() > 0 {
			c.c.Close()
			if err != nil && reused && !started && method == http.MethodGet && ctx.Err() == nil && closedByPeer(err) {
				rc.resent.Add(1)
				continue
			}
			if err == nil && ctx.Err() != nil {
				err = ctx.Err()
			}
			return status, out, err
		}
		select {
		case rc.idle <- c:
		default:
			c.c.Close()
		}
		return status, out, nil
	}
}

// closedByPeer tells a connection the server had closed (what a resend
// on a new connection mends) from a timeout or any other failure.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (c *rawConn) roundTrip(host, method, path string, hdr []string, body string) (status int, out []byte, keep, started bool, err error) {
	w := c.bw
	w.WriteString(method)
	w.WriteByte(' ')
	w.WriteString(path)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	for i := 0; i+1 < len(hdr); i += 2 {
		w.WriteString(hdr[i])
		w.WriteString(": ")
		w.WriteString(hdr[i+1])
		w.WriteString("\r\n")
	}
	if body != "" || method == "POST" || method == "PUT" || method == "PATCH" {
		w.WriteString("Content-Length: ")
		w.WriteString(strconv.Itoa(len(body)))
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
	w.WriteString(body)
	if err := w.Flush(); err != nil {
		return 0, nil, false, false, err
	}
	if _, err := c.br.Peek(1); err != nil {
		return 0, nil, false, false, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, nil, false, true, err
	}
	out, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return resp.StatusCode, out, false, true, err
	}
	if resp.StatusCode < 200 {
		// An interim answer (100 Continue, 103 Early Hints, 101): the
		// final one would still be unread on the connection.
		return resp.StatusCode, out, false, true, fmt.Errorf("apibench: unexpected interim response %d", resp.StatusCode)
	}
	return resp.StatusCode, out, !resp.Close, true, nil
}
