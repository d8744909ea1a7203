package pii

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/tink-crypto/tink-go-awskms/v2/integration/awskms"
	"github.com/tink-crypto/tink-go-gcpkms/v2/integration/gcpkms"
	"github.com/tink-crypto/tink-go-hcvault/v2/integration/hcvault"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// URI schemes of key-encryption keys.
const (
	LocalKMSPrefix = "local-kms://"
	AWSKMSPrefix   = "aws-kms://"
	GCPKMSPrefix   = "gcp-kms://"
	VaultPrefix    = "hcvault://"
)

// ErrUnknownKMS is returned for a KEK URI with an unsupported scheme.
var ErrUnknownKMS = errors.New("pii: unsupported KMS key URI")

// KEK returns the key-encryption AEAD named by uri.
func KEK(ctx context.Context, uri string) (tink.AEAD, error) {
	switch {
	case strings.HasPrefix(uri, LocalKMSPrefix):
		return localKEK(strings.TrimPrefix(uri, LocalKMSPrefix))
	case strings.HasPrefix(uri, AWSKMSPrefix):
		c, err := awskms.NewClientWithOptions(uri)
		if err != nil {
			return nil, fmt.Errorf("pii: AWS KMS client for %s: %w", uri, err)
		}
		return c.GetAEAD(uri)
	case strings.HasPrefix(uri, GCPKMSPrefix):
		c, err := gcpkms.NewClientWithOptions(ctx, uri)
		if err != nil {
			return nil, fmt.Errorf("pii: GCP KMS client for %s: %w", uri, err)
		}
		return c.GetAEAD(uri)
	case strings.HasPrefix(uri, VaultPrefix):
		return vaultKEK(uri)
	}
	return nil, fmt.Errorf("%w: %q (use local-kms://<path>, aws-kms://arn:..., gcp-kms://projects/... or hcvault://host:port/transit/keys/<name>)", ErrUnknownKMS, uri)
}

func vaultKEK(uri string) (tink.AEAD, error) {
	vc, err := api.NewClient(api.DefaultConfig()) // VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT
	if err != nil {
		return nil, fmt.Errorf("pii: Vault client: %w", err)
	}
	c, err := hcvault.NewClientWithAEADOptions(uri, vc.Logical())
	if err != nil {
		return nil, fmt.Errorf("pii: Vault KMS client for %s: %w", uri, err)
	}
	return c.GetAEAD(uri)
}

// localKEK reads a cleartext AES-256-GCM keyset used as the dev stack's
// stand-in for a KMS key. Production uses a real KMS URI.
func localKEK(path string) (tink.AEAD, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("pii: opening local KEK %s (create it with `loanflow keys init`): %w", path, err)
	}
	defer f.Close()
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(f))
	if err != nil {
		return nil, fmt.Errorf("pii: reading local KEK %s: %w", path, err)
	}
	return aead.New(h)
}

// CreateLocalKEK writes a new local KEK file at path unless one exists.
func CreateLocalKEK(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return fmt.Errorf("pii: generating local KEK: %w", err)
	}
	return writeFileAtomic(path, func(f *os.File) error {
		return insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(f))
	})
}

func writeFileAtomic(path string, write func(*os.File) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("pii: creating %s: %w", filepath.Dir(path), err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("pii: writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("pii: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
