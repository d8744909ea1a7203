package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestProbe(t *testing.T) {
	ready := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || !ready {
			http.Error(w, "not ready: restoring state", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	}))
	defer srv.Close()
	ctx := context.Background()
	if err := probe(ctx, srv.URL+"/readyz", time.Second); !errors.Is(err, errUnhealthy) {
		t.Fatalf("503: got %v, want errUnhealthy", err)
	}
	ready = true
	if err := probe(ctx, srv.URL+"/readyz", time.Second); err != nil {
		t.Fatalf("200: %v", err)
	}
	if err := probe(ctx, srv.URL+"/other", time.Second); !errors.Is(err, errUnhealthy) {
		t.Fatalf("404 path: got %v", err)
	}
}

func TestProbeRefusedAndBadURL(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := probe(context.Background(), "http://"+addr+"/healthz", time.Second); err == nil {
		t.Fatal("closed port: want an error")
	}
	for _, u := range []string{"", "127.0.0.1:8080/readyz", "ftp://x/y", "http:///readyz"} {
		if err := probe(context.Background(), u, time.Second); err == nil || errors.Is(err, errUnhealthy) {
			t.Errorf("%q: got %v, want a bad-URL error", u, err)
		}
	}
}

func TestProbeTimeout(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	if err := probe(context.Background(), srv.URL, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung server: got %v, want a deadline error", err)
	}
}
