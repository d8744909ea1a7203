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
}

type rawConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

// newRawClient keeps up to maxIdle connections to base's host (http only).
func newRawClient(base string, maxIdle int, timeout time.Duration) (*rawClient, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("apibench: the load generator speaks plain HTTP/1.1, not %q", u.Scheme)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &rawClient{addr: addr, host: u.Host, timeout: timeout, idle: make(chan *rawConn, max(maxIdle, 1))}, nil
}

// do sends one request and returns the response's status and body. A
// connection is reused only after a response read to its end that did not
// ask to close it. A GET that fails on a reused connection before any of
// its response arrived (the server closed the idle connection) is sent
// once more on a new one, as net/http does.
func (rc *rawClient) do(ctx context.Context, method, path string, hdr []string, body string) (int, []byte, error) {
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
			d := net.Dialer{Timeout: rc.timeout}
			nc, err := d.DialContext(ctx, "tcp", rc.addr)
			if err != nil {
				return 0, nil, err
			}
			c = &rawConn{c: nc, br: bufio.NewReaderSize(nc, 8<<10), bw: bufio.NewWriterSize(nc, 4<<10)}
		}
		deadline := time.Now().Add(rc.timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = c.c.SetDeadline(deadline)
		status, out, keep, started, err := c.roundTrip(rc.host, method, path, hdr, body)
		if err != nil || !keep {
			c.c.Close()
			if err != nil && reused && !started && method == http.MethodGet && ctx.Err() == nil {
				continue
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

// roundTrip writes the request and reads the response; started tells
// whether any of the response arrived.
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
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp.StatusCode, out, false, true, errors.New("apibench: unexpected protocol switch")
	}
	return resp.StatusCode, out, !resp.Close, true, nil
}
