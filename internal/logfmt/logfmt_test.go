package logfmt

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"
	"time"
)

func TestDurationsAreStrings(t *testing.T) {
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, Options(slog.LevelInfo))).Info("x", "took", 1500*time.Millisecond, "n", 3)
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["took"] != "1.5s" || m["n"] != float64(3) {
		t.Fatalf("logged %s", b.String())
	}
	// Negative control: the default handler logs nanoseconds.
	b.Reset()
	slog.New(slog.NewJSONHandler(&b, nil)).Info("x", "took", 1500*time.Millisecond)
	if !bytes.Contains(b.Bytes(), []byte(`"took":1500000000`)) {
		t.Fatalf("the default handler no longer logs nanoseconds: %s", b.String())
	}
}
