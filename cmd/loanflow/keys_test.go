package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/internal/testenv"
)

// TestKeysRotateReencrypts: `loanflow keys rotate --index --database-url`
// rotates both keysets and moves a customer's ciphertexts and blind index
// to the new keys (checked on the Tink prefix of the stored bytes), with
// progress lines; the SSN still decrypts.
func TestKeysRotateReencrypts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	dsn := testenv.NewDatabase(t)
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		var out bytes.Buffer
		root := newRootCmd()
		root.SetOut(&out)
		root.SetArgs(append(args, "--keys-dir", dir))
		if err := root.ExecuteContext(ctx); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	run("keys", "init")
	cfg := (&keyFlags{dir: dir}).config()
	keys, err := pii.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ssnCT, err := keys.Encrypt(pii.Field{Table: "customers", Column: "ssn_ct", Row: "c-1"}, []byte("123456789"))
	if err != nil {
		t.Fatal(err)
	}
	nameCT, err := keys.Encrypt(pii.Field{Table: "customers", Column: "name_ct", Row: "c-1"}, []byte("Ada"))
	if err != nil {
		t.Fatal(err)
	}
	idx, ver, _ := keys.BlindIndex("123456789")
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `INSERT INTO customers (customer_id, name_ct, ssn_ct, ssn_index, ssn_index_key_version, credit_limit, risk_tier)
		VALUES ('c-1', $4, $1, $2, $3, 100, 'LOW')`, ssnCT, idx, int64(ver), nameCT); err != nil {
		t.Fatal(err)
	}
	out := run("keys", "rotate", "--index", "--database-url", dsn, "--batch", "1")
	if !strings.Contains(out, "rekey: 1/1 customers scanned, 1 re-encrypted, 1 re-indexed") || !strings.Contains(out, "rekey done") {
		t.Fatalf("output:\n%s", out)
	}
	after, err := pii.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ct []byte
	var v int64
	if err := pool.QueryRow(ctx, "SELECT ssn_ct, ssn_index_key_version FROM customers").Scan(&ct, &v); err != nil {
		t.Fatal(err)
	}
	kid, _ := pii.CiphertextKeyID(ct)
	if kid != after.PrimaryKeyID() || kid == keys.PrimaryKeyID() || uint32(v) != after.IndexKeyID() || uint32(v) == ver {
		t.Fatalf("after rotate: ciphertext key %d (primary %d, old %d), index key %d (primary %d, old %d)", kid, after.PrimaryKeyID(), keys.PrimaryKeyID(), v, after.IndexKeyID(), ver)
	}
	pt, err := after.Decrypt(pii.Field{Table: "customers", Column: "ssn_ct", Row: "c-1"}, ct)
	if err != nil || string(pt) != "123456789" {
		t.Fatalf("decrypt after rotate: %q %v", pt, err)
	}
}
