package api

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/pii"
)

// RekeyProgress is reported after each batch of Rekey.
type RekeyProgress struct {
	Scanned, Reencrypted, Reindexed, Total int64
}

// Rekey brings every customer's PII under the current primary keys, in
// batches of batch rows (one transaction each, in customer_id order, so it
// can be stopped and run again): ciphertexts sealed with an older data key
// are re-encrypted, and an SSN blind index made with an older index key is
// recomputed with the primary one (ssn_index_key_version follows). Run it
// after `loanflow keys rotate` (and --index); older keys can be retired
// once it has finished. progress, when set, is called after each batch.
func Rekey(ctx context.Context, pool *pgxpool.Pool, keys *pii.Keyring, batch int, progress func(RekeyProgress)) (RekeyProgress, error) {
	var p RekeyProgress
	if batch <= 0 {
		batch = 500
	}
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM customers").Scan(&p.Total); err != nil {
		return p, fmt.Errorf("api: counting customers: %w", err)
	}
	dataKey, indexKey := keys.PrimaryKeyID(), keys.IndexKeyID()
	after := ""
	for {
		n := 0
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `SELECT customer_id, name_ct, ssn_ct, address_ct, dob_ct, ssn_index_key_version FROM customers
				WHERE customer_id > $1 ORDER BY customer_id LIMIT $2 FOR UPDATE`, after, batch)
			if err != nil {
				return err
			}
			type row struct {
				id      string
				cts     [4][]byte
				idxVer  int64
				changed bool
				reindex []byte
			}
			var rs []row
			for rows.Next() {
				var r row
				if err := rows.Scan(&r.id, &r.cts[0], &r.cts[1], &r.cts[2], &r.cts[3], &r.idxVer); err != nil {
					rows.Close()
					return err
				}
				rs = append(rs, r)
			}
			if err := rows.Err(); err != nil {
				return err
			}
			cols := [4]string{"name_ct", "ssn_ct", "address_ct", "dob_ct"}
			for i := range rs {
				r := &rs[i]
				for c, ct := range r.cts {
					if ct == nil {
						continue
					}
					if kid, ok := pii.CiphertextKeyID(ct); ok && kid == dataKey && !(c == 1 && uint32(r.idxVer) != indexKey) {
						continue
					}
					f := pii.Field{Table: "customers", Column: cols[c], Row: r.id}
					pt, err := keys.Decrypt(f, ct)
					if err != nil {
						return err
					}
					if c == 1 && uint32(r.idxVer) != indexKey {
						if r.reindex, _, err = keys.BlindIndex(string(pt)); err != nil {
							return err
						}
					}
					if kid, ok := pii.CiphertextKeyID(ct); !ok || kid != dataKey {
						if r.cts[c], err = keys.Encrypt(f, pt); err != nil {
							return err
						}
						r.changed = true
					}
				}
				if r.changed || r.reindex != nil {
					idx, ver := r.reindex, int64(indexKey)
					if _, err := tx.Exec(ctx, `UPDATE customers SET name_ct = $2, ssn_ct = $3, address_ct = $4, dob_ct = $5,
						ssn_index = coalesce($6, ssn_index), ssn_index_key_version = CASE WHEN $6::bytea IS NULL THEN ssn_index_key_version ELSE $7 END
						WHERE customer_id = $1`, r.id, r.cts[0], r.cts[1], r.cts[2], r.cts[3], idx, ver); err != nil {
						return err
					}
				}
			}
			for _, r := range rs {
				if r.changed {
					p.Reencrypted++
				}
				if r.reindex != nil {
					p.Reindexed++
				}
			}
			n = len(rs)
			if n > 0 {
				after = rs[n-1].id
			}
			return nil
		})
		if err != nil {
			return p, fmt.Errorf("api: rekeying customers after %q: %w", after, err)
		}
		p.Scanned += int64(n)
		if n == 0 {
			return p, nil
		}
		if progress != nil {
			progress(p)
		}
	}
}
