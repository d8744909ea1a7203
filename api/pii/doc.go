// Package pii encrypts personally identifiable information (SSN, name,
// address, date of birth) and computes SSN blind indexes.
//
// # Keys
//
// Two Tink keysets, each stored encrypted ("wrapped") by a key-encryption
// key (KEK) held in a KMS and named by URI:
//
//   - the data keyset (AES-256-GCM) encrypts PII; the associated data binds
//     every ciphertext to its table, column and row, so a ciphertext copied
//     to another row or column does not decrypt;
//   - the index keyset (HMAC-SHA256 PRF) computes the SSN blind index; it is
//     a separate key, so the index reveals nothing to a holder of the data
//     key and vice versa. The index records the PRF key id ("key version")
//     it was computed with; lookups compute the index under every key in the
//     set, so a rotated index key still finds old rows.
//
// KEK URIs: local-kms://<path> (a cleartext keyset file: the dev stack
// only), aws-kms://arn:..., gcp-kms://projects/... and hcvault://host/...
// (the tink-go KMS extensions; credentials from the usual environment:
// AWS default chain, GCP application default credentials, VAULT_TOKEN).
//
// Rotate adds a new primary key to the data keyset; older keys stay in the
// set, so old ciphertexts stay readable. A running Keyring picks the new
// primary up with Reload.
//
// # Errors
//
// ErrDecrypt when a ciphertext does not authenticate (wrong row, column or
// table, tampering, or a key missing from the set); ErrInvalidSSN for an
// SSN that is not nine digits; configuration errors name the fix. Nothing
// in this package logs plaintext.
//
// Keyring is safe for concurrent use; it starts no goroutines.
package pii
