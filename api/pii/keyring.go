package pii

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/prf"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"
)

var (
	// ErrDecrypt is returned when a ciphertext does not authenticate.
	ErrDecrypt = errors.New("pii: decryption failed")
	// ErrInvalidSSN is returned for an SSN that is not nine digits.
	ErrInvalidSSN = errors.New("pii: SSN must be nine digits (dashes allowed)")
	// ErrNoKeyset is returned when a keyset file is missing.
	ErrNoKeyset = errors.New("pii: keyset missing")
)

// IndexLen is the length of a blind index in bytes.
const IndexLen = 32

// Config names the keysets and their key-encryption key.
type Config struct {
	// KEKURI names the key-encryption key, e.g. local-kms:///var/lib/loanflow/kek.json.
	KEKURI string
	// DataKeysetPath is the wrapped AES-256-GCM keyset file.
	DataKeysetPath string
	// IndexKeysetPath is the wrapped HMAC-SHA256 PRF keyset file.
	IndexKeysetPath string
}

// Validate reports a missing field.
func (c Config) Validate() error {
	switch {
	case c.KEKURI == "":
		return errors.New("pii: KEKURI is required (e.g. local-kms://.loanflow/keys/kek.json)")
	case c.DataKeysetPath == "":
		return errors.New("pii: DataKeysetPath is required")
	case c.IndexKeysetPath == "":
		return errors.New("pii: IndexKeysetPath is required")
	}
	return nil
}

// keysetAD binds a wrapped keyset file to its role.
func keysetAD(role string) []byte { return []byte("loanflow-keyset:" + role) }

// Keyring holds the data AEAD and the index PRF set.
type Keyring struct {
	cfg Config
	kek tink.AEAD
	mu  struct {
		sync.RWMutex
		aead     tink.AEAD
		prfs     *prf.Set
		modTime  time.Time
		primary  uint32
		keyCount int
	}
}

// Init creates the local KEK (local-kms only) and both keysets when they do
// not exist yet. It never replaces an existing keyset.
func Init(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if p, ok := cutPrefix(cfg.KEKURI, LocalKMSPrefix); ok {
		if err := CreateLocalKEK(p); err != nil {
			return err
		}
	}
	kek, err := KEK(ctx, cfg.KEKURI)
	if err != nil {
		return err
	}
	if err := createKeyset(cfg.DataKeysetPath, "data", kek, aead.AES256GCMKeyTemplate); err != nil {
		return err
	}
	return createKeyset(cfg.IndexKeysetPath, "index", kek, prf.HMACSHA256PRFKeyTemplate)
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

func createKeyset(path, role string, kek tink.AEAD, tmpl func() *tinkpb.KeyTemplate) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	h, err := keyset.NewHandle(tmpl())
	if err != nil {
		return fmt.Errorf("pii: generating %s keyset: %w", role, err)
	}
	return writeKeyset(path, role, h, kek)
}

func writeKeyset(path, role string, h *keyset.Handle, kek tink.AEAD) error {
	return writeFileAtomic(path, func(f *os.File) error {
		return h.WriteWithAssociatedData(keyset.NewJSONWriter(f), kek, keysetAD(role))
	})
}

func readKeyset(path, role string, kek tink.AEAD) (*keyset.Handle, error) {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%w: %s (create it with `loanflow keys init`)", ErrNoKeyset, path)
		}
		return nil, fmt.Errorf("pii: opening %s keyset: %w", role, err)
	}
	defer f.Close()
	h, err := keyset.ReadWithAssociatedData(keyset.NewJSONReader(f), kek, keysetAD(role))
	if err != nil {
		return nil, fmt.Errorf("pii: unwrapping %s keyset %s (wrong KEK?): %w", role, path, err)
	}
	return h, nil
}

// Open loads both keysets through the KEK.
func Open(ctx context.Context, cfg Config) (*Keyring, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	kek, err := KEK(ctx, cfg.KEKURI)
	if err != nil {
		return nil, err
	}
	k := &Keyring{cfg: cfg, kek: kek}
	if err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Keyring) load() error {
	st, err := os.Stat(k.cfg.DataKeysetPath)
	if err != nil {
		return fmt.Errorf("%w: %s (create it with `loanflow keys init`)", ErrNoKeyset, k.cfg.DataKeysetPath)
	}
	dh, err := readKeyset(k.cfg.DataKeysetPath, "data", k.kek)
	if err != nil {
		return err
	}
	a, err := aead.New(dh)
	if err != nil {
		return fmt.Errorf("pii: data keyset: %w", err)
	}
	ih, err := readKeyset(k.cfg.IndexKeysetPath, "index", k.kek)
	if err != nil {
		return err
	}
	ps, err := prf.NewPRFSet(ih)
	if err != nil {
		return fmt.Errorf("pii: index keyset: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.mu.aead, k.mu.prfs, k.mu.modTime = a, ps, st.ModTime()
	k.mu.primary, k.mu.keyCount = dh.KeysetInfo().GetPrimaryKeyId(), dh.Len()
	return nil
}

// Reload re-reads the keysets when the data keyset file changed (after
// `loanflow keys rotate`). It reports whether it reloaded.
func (k *Keyring) Reload() (bool, error) {
	st, err := os.Stat(k.cfg.DataKeysetPath)
	if err != nil {
		return false, fmt.Errorf("pii: stat %s: %w", k.cfg.DataKeysetPath, err)
	}
	k.mu.RLock()
	same := st.ModTime().Equal(k.mu.modTime)
	k.mu.RUnlock()
	if same {
		return false, nil
	}
	return true, k.load()
}

// PrimaryKeyID is the id of the data key new ciphertexts use.
func (k *Keyring) PrimaryKeyID() uint32 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.mu.primary
}

// Field names a PII cell: the associated data of its ciphertext.
type Field struct{ Table, Column, Row string }

func (f Field) ad() []byte {
	var b bytes.Buffer
	b.WriteString("loanflow-pii-v1")
	for _, s := range []string{f.Table, f.Column, f.Row} {
		_ = binary.Write(&b, binary.BigEndian, uint32(len(s)))
		b.WriteString(s)
	}
	return b.Bytes()
}

// Encrypt seals plaintext for the cell f.
func (k *Keyring) Encrypt(f Field, plaintext []byte) ([]byte, error) {
	k.mu.RLock()
	a := k.mu.aead
	k.mu.RUnlock()
	ct, err := a.Encrypt(plaintext, f.ad())
	if err != nil {
		return nil, fmt.Errorf("pii: encrypting %s.%s: %w", f.Table, f.Column, err)
	}
	return ct, nil
}

// Decrypt opens a ciphertext of the cell f.
func (k *Keyring) Decrypt(f Field, ciphertext []byte) ([]byte, error) {
	k.mu.RLock()
	a := k.mu.aead
	k.mu.RUnlock()
	pt, err := a.Decrypt(ciphertext, f.ad())
	if err != nil {
		return nil, fmt.Errorf("%w: %s.%s row %s", ErrDecrypt, f.Table, f.Column, f.Row)
	}
	return pt, nil
}

// NormalizeSSN strips dashes and spaces and checks for nine digits.
func NormalizeSSN(ssn string) (string, error) {
	out := make([]byte, 0, 9)
	for i := 0; i < len(ssn); i++ {
		c := ssn[i]
		switch {
		case c >= '0' && c <= '9':
			out = append(out, c)
		case c == '-' || c == ' ':
		default:
			return "", ErrInvalidSSN
		}
	}
	if len(out) != 9 {
		return "", ErrInvalidSSN
	}
	return string(out), nil
}

// BlindIndex computes the SSN blind index under the primary index key and
// returns it with that key's id (the index key version).
func (k *Keyring) BlindIndex(ssn string) ([]byte, uint32, error) {
	n, err := NormalizeSSN(ssn)
	if err != nil {
		return nil, 0, err
	}
	k.mu.RLock()
	ps := k.mu.prfs
	k.mu.RUnlock()
	out, err := ps.ComputePrimaryPRF([]byte("ssn:"+n), IndexLen)
	if err != nil {
		return nil, 0, fmt.Errorf("pii: computing blind index: %w", err)
	}
	return out, ps.PrimaryID, nil
}

// BlindIndexes computes the SSN index under every index key, for lookups
// that must find rows indexed before a rotation.
func (k *Keyring) BlindIndexes(ssn string) ([][]byte, error) {
	n, err := NormalizeSSN(ssn)
	if err != nil {
		return nil, err
	}
	k.mu.RLock()
	ps := k.mu.prfs
	k.mu.RUnlock()
	var out [][]byte
	for _, p := range ps.PRFs {
		v, err := p.ComputePRF([]byte("ssn:"+n), IndexLen)
		if err != nil {
			return nil, fmt.Errorf("pii: computing blind index: %w", err)
		}
		out = append(out, v)
	}
	return out, nil
}

// EqualIndex compares two blind indexes in constant time.
func EqualIndex(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// Rotate adds a new AES-256-GCM key to the data keyset and makes it the
// primary; earlier keys stay enabled so existing ciphertexts decrypt. It
// returns the new primary key id.
func Rotate(ctx context.Context, cfg Config) (uint32, error) {
	return rotate(ctx, cfg, cfg.DataKeysetPath, "data", aead.AES256GCMKeyTemplate())
}

// RotateIndex adds a new HMAC-SHA256 PRF key to the blind-index keyset and
// makes it the primary; earlier keys stay so rows indexed under them are
// still found (BlindIndexes) until they are re-indexed.
func RotateIndex(ctx context.Context, cfg Config) (uint32, error) {
	return rotate(ctx, cfg, cfg.IndexKeysetPath, "index", prf.HMACSHA256PRFKeyTemplate())
}

// CiphertextKeyID is the id of the key a Tink ciphertext was sealed with
// (its 5-byte prefix: 0x01 and the key id), false for a raw ciphertext.
func CiphertextKeyID(ct []byte) (uint32, bool) {
	if len(ct) < 5 || ct[0] != 1 {
		return 0, false
	}
	return binary.BigEndian.Uint32(ct[1:5]), true
}

// IndexKeyID is the primary blind-index key's id.
func (k *Keyring) IndexKeyID() uint32 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.mu.prfs.PrimaryID
}

func rotate(ctx context.Context, cfg Config, path, role string, tmpl *tinkpb.KeyTemplate) (uint32, error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	kek, err := KEK(ctx, cfg.KEKURI)
	if err != nil {
		return 0, err
	}
	h, err := readKeyset(path, role, kek)
	if err != nil {
		return 0, err
	}
	m := keyset.NewManagerFromHandle(h)
	id, err := m.Add(tmpl)
	if err != nil {
		return 0, fmt.Errorf("pii: adding key: %w", err)
	}
	if err := m.SetPrimary(id); err != nil {
		return 0, fmt.Errorf("pii: promoting key %d: %w", id, err)
	}
	nh, err := m.Handle()
	if err != nil {
		return 0, fmt.Errorf("pii: building keyset: %w", err)
	}
	return id, writeKeyset(path, role, nh, kek)
}

// MAC computes a 32-byte PRF tag of msg under the primary index key, with
// domain separation ("mac:" + domain + ":" before msg, where blind indexes
// use "ssn:"), and returns it with the key's id. The audit log's anchors
// are signed with it: a key held by the KMS-wrapped keyset, never by the
// database.
func (k *Keyring) MAC(domain string, msg []byte) ([]byte, uint32, error) {
	k.mu.RLock()
	ps := k.mu.prfs
	k.mu.RUnlock()
	out, err := ps.ComputePrimaryPRF(append([]byte("mac:"+domain+":"), msg...), IndexLen)
	if err != nil {
		return nil, 0, fmt.Errorf("pii: computing MAC: %w", err)
	}
	return out, ps.PrimaryID, nil
}

// VerifyMAC reports whether tag is MAC(domain, msg) under the index key
// keyID (any key of the keyset, so tags made before a rotation verify).
func (k *Keyring) VerifyMAC(domain string, msg []byte, keyID uint32, tag []byte) bool {
	k.mu.RLock()
	ps := k.mu.prfs
	k.mu.RUnlock()
	p, ok := ps.PRFs[keyID]
	if !ok {
		return false
	}
	want, err := p.ComputePRF(append([]byte("mac:"+domain+":"), msg...), IndexLen)
	return err == nil && subtle.ConstantTimeCompare(want, tag) == 1
}
