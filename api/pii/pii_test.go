package pii

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func testConfig(t *testing.T) Config {
	dir := t.TempDir()
	return Config{KEKURI: LocalKMSPrefix + filepath.Join(dir, "kek.json"),
		DataKeysetPath: filepath.Join(dir, "data.json"), IndexKeysetPath: filepath.Join(dir, "index.json")}
}

func TestEncryptRotateReload(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t)
	if err := Init(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	k, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := Field{Table: "customers", Column: "ssn_ct", Row: "c-1"}
	old, err := k.Encrypt(f, []byte("123456789"))
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []Field{{"customers", "ssn_ct", "c-2"}, {"customers", "name_ct", "c-1"}, {"loans", "ssn_ct", "c-1"}} {
		if _, err := k.Decrypt(other, old); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("decrypts under %+v: %v", other, err)
		}
	}
	idx1, ver1, _ := k.BlindIndex("123-45-6789")
	first := k.PrimaryKeyID()
	time.Sleep(10 * time.Millisecond) // distinct mtime
	id, err := Rotate(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := k.Reload(); !ok || err != nil {
		t.Fatalf("reload: %v %v", ok, err)
	}
	if k.PrimaryKeyID() != id || id == first {
		t.Fatalf("primary %d after rotate to %d (was %d)", k.PrimaryKeyID(), id, first)
	}
	if pt, err := k.Decrypt(f, old); err != nil || string(pt) != "123456789" {
		t.Fatalf("old ciphertext after rotation: %q %v", pt, err)
	}
	fresh, _ := k.Encrypt(f, []byte("123456789"))
	if pt, err := k.Decrypt(f, fresh); err != nil || string(pt) != "123456789" {
		t.Fatal(err)
	}
	idx2, ver2, _ := k.BlindIndex("123456789")
	if !EqualIndex(idx1, idx2) || ver1 != ver2 {
		t.Fatal("blind index changed with the data key")
	}
	if _, err := NormalizeSSN("12-34"); !errors.Is(err, ErrInvalidSSN) {
		t.Fatal(err)
	}
}

func TestKEKErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := KEK(ctx, "foo://bar"); !errors.Is(err, ErrUnknownKMS) {
		t.Fatalf("unknown scheme: %v", err)
	}
	cfg := testConfig(t)
	if _, err := Open(ctx, cfg); err == nil {
		t.Fatal("open without keys succeeded")
	}
	if err := Init(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// A different KEK cannot unwrap the keysets.
	other := testConfig(t)
	if err := CreateLocalKEK(other.KEKURI[len(LocalKMSPrefix):]); err != nil {
		t.Fatal(err)
	}
	cfg.KEKURI = other.KEKURI
	if _, err := Open(ctx, cfg); err == nil {
		t.Fatal("keyset unwrapped with the wrong KEK")
	}
	b, _ := os.ReadFile(cfg.DataKeysetPath)
	if len(b) == 0 {
		t.Fatal("empty keyset file")
	}
}
