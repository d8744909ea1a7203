package api

import (
	"context"
	"fmt"
	"testing"

	"github.com/loanflow/loanflow/api/pii"
)

// TestRekeyAfterRotation (issue 9, Medium 10): after the data and index
// keysets rotate, Rekey re-encrypts every customer's PII under the new
// data key and re-indexes the SSN under the new index key, in batches
// with progress; the plaintexts are unchanged, and the re-indexed SSN
// still identifies its applicant. The control: before Rekey every
// ciphertext still names the old key (read from the Tink prefix, not from
// the code under test's bookkeeping).
func TestRekeyAfterRotation(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-k")
	other := e.lender("bank-k2")
	const n = 5
	for i := 0; i < n; i++ {
		e.customer(fmt.Sprintf("c-k%d", i), fmt.Sprintf("Key Person %d", i), fmt.Sprintf("222-33-%04d", i), "bank-k")
	}
	ctx := context.Background()
	oldData, oldIndex := e.srv.Keys().PrimaryKeyID(), e.srv.Keys().IndexKeyID()
	newData, err := pii.Rotate(ctx, e.cfg.PII)
	if err != nil {
		t.Fatal(err)
	}
	newIndex, err := pii.RotateIndex(ctx, e.cfg.PII)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.Keys().Reload(); err != nil {
		t.Fatal(err)
	}
	if e.srv.Keys().PrimaryKeyID() != newData || e.srv.Keys().IndexKeyID() != newIndex || newData == oldData || newIndex == oldIndex {
		t.Fatalf("rotation: data %d -> %d, index %d -> %d", oldData, newData, oldIndex, newIndex)
	}
	keyIDs := func() (map[uint32]int, map[int64]int) {
		data, index := map[uint32]int{}, map[int64]int{}
		rows, err := e.srv.Pool().Query(ctx, "SELECT name_ct, ssn_ct, address_ct, dob_ct, ssn_index_key_version FROM customers")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var cts [4][]byte
			var v int64
			if err := rows.Scan(&cts[0], &cts[1], &cts[2], &cts[3], &v); err != nil {
				t.Fatal(err)
			}
			for _, ct := range cts {
				if len(ct) >= 5 {
					data[uint32(ct[1])<<24|uint32(ct[2])<<16|uint32(ct[3])<<8|uint32(ct[4])]++
				}
			}
			index[v]++
		}
		return data, index
	}
	if d, i := keyIDs(); d[oldData] != 4*n || i[int64(oldIndex)] != n {
		t.Fatalf("before Rekey (control): data keys %v, index keys %v", d, i)
	}
	var reports []RekeyProgress
	p, err := Rekey(ctx, e.srv.Pool(), e.srv.Keys(), 2, func(p RekeyProgress) { reports = append(reports, p) })
	if err != nil {
		t.Fatal(err)
	}
	if p.Scanned != n || p.Reencrypted != n || p.Reindexed != n || len(reports) != 3 || reports[2].Scanned != n {
		t.Fatalf("rekey: %+v, progress %+v", p, reports)
	}
	if d, i := keyIDs(); d[newData] != 4*n || len(d) != 1 || i[int64(newIndex)] != n || len(i) != 1 {
		t.Fatalf("after Rekey: data keys %v, index keys %v", d, i)
	}
	// Plaintexts unchanged.
	full := e.clientToken("bank-k-pii", "bank-k", "credit:read", "pii:read")
	if pr, r := e.profileAt(full, "c-k3", "ACCOUNT_REVIEW", true); r.status != 200 || pr.PII.Name != "Key Person 3" || pr.PII.SSN != "222330003" {
		t.Fatalf("after Rekey: %d %s", r.status, r.body)
	}
	// The new blind index identifies the applicant: another lender naming
	// c-k1 with its SSN is accepted, with another SSN refused.
	if r := e.apply(other, "app-k-1", "c-k1", "222-33-0001", "USD"); r.status != 202 {
		t.Fatalf("matching applicant after re-index: %d %s", r.status, r.body)
	}
	if r := e.apply(other, "app-k-2", "c-k2", "222-33-0001", "USD"); r.status != 422 {
		t.Fatalf("another SSN after re-index: %d %s", r.status, r.body)
	}
	// A second run finds nothing to do.
	if p, err := Rekey(ctx, e.srv.Pool(), e.srv.Keys(), 2, nil); err != nil || p.Reencrypted != 0 || p.Reindexed != 0 {
		t.Fatalf("second run: %+v %v", p, err)
	}
	_ = tok
}
