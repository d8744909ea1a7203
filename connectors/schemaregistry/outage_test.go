package schemaregistry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/twmb/franz-go/pkg/sr"
)

// TestBrokerOutage: while its broker is down the registry keeps serving
// reads from memory and answers writes with a 5xx store error (so clients
// retry); when the broker is back, writes work again and nothing was lost.
func TestBrokerOutage(t *testing.T) {
	dir := filepath.Join(testenv.Dir(t, "outage"), "data")
	port := freePort(t)
	opts := localsvc.BrokerOptions{Port: port, DataDir: dir}
	brk := testenv.NewBroker(t, opts)

	r, err := New(Config{
		Brokers: brk.Addrs(), Listen: "127.0.0.1:0", WriteTimeout: 3 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-r.Ready()
	cl := srClient(t, r)
	id1, err := cl.RegisterSchema(ctx, "o-value", avroSchema(appV1), -1, -1)
	if err != nil {
		t.Fatal(err)
	}

	brk.Stop()
	if s, err := cl.SchemaByID(ctx, id1); err != nil || !equalSchema(s.Schema, appV1) {
		t.Fatalf("read during the outage: %v", err)
	}
	_, err = cl.RegisterSchema(ctx, "o-value", avroSchema(appV2), -1, -1)
	if code := responseErrCode(err); code != codeStoreError && code != codeOperationTimeout {
		t.Fatalf("write during the outage: %v", err)
	}

	testenv.NewBroker(t, opts) // same port and data directory
	var id2 int
	deadline := time.Now().Add(60 * time.Second)
	for id2, err = cl.RegisterSchema(ctx, "o-value", avroSchema(appV2), -1, -1); err != nil; id2, err = cl.RegisterSchema(ctx, "o-value", avroSchema(appV2), -1, -1) {
		if time.Now().After(deadline) {
			t.Fatalf("write after the broker came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if id2 == id1 {
		t.Fatalf("v2 got v1's id %d", id1)
	}
	vs, err := cl.SubjectVersions(ctx, "o-value")
	if err != nil || len(vs) != 2 {
		t.Fatalf("versions after the outage: %v (%v); a failed write must not leave a version behind", vs, err)
	}
}

func responseErrCode(err error) int {
	var re *sr.ResponseError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return 0
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}
