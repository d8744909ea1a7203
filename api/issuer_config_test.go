package api

import (
	"strings"
	"testing"

	"github.com/loanflow/loanflow/api/pii"
)

// TestProductionNeedsAnIssuer (issue 9, Low): a server configured with
// neither an external issuer nor DevIssuer refuses to start with the fix
// in its message, rather than falling back to the dev issuer; each of them
// alone is accepted (the controls), both together are refused.
func TestProductionNeedsAnIssuer(t *testing.T) {
	base := func() Config {
		c := Config{DatabaseURL: "postgres://x/y", RedisURL: "redis://127.0.0.1:6379/0", KafkaBrokers: []string{"127.0.0.1:9092"},
			SchemaRegistryURL: "http://127.0.0.1:8081",
			PII:               pii.Config{KEKURI: pii.LocalKMSPrefix + "/k", DataKeysetPath: "/d", IndexKeysetPath: "/i"}}
		return c
	}
	validate := func(c Config) error {
		c.SetDefaults()
		return c.Validate()
	}
	err := validate(base())
	if err == nil || !strings.Contains(err.Error(), "no token issuer") || !strings.Contains(err.Error(), "--dev-issuer") {
		t.Fatalf("no issuer: %v", err)
	}
	dev := base()
	dev.DevIssuer = true
	if err := validate(dev); err != nil {
		t.Fatalf("dev issuer: %v", err)
	}
	ext := base()
	ext.ExternalIssuer, ext.ExternalJWKSURL = "https://issuer.example", "https://issuer.example/jwks.json"
	if err := validate(ext); err != nil {
		t.Fatalf("external issuer: %v", err)
	}
	both := ext
	both.DevIssuer = true
	if err := validate(both); err == nil || !strings.Contains(err.Error(), "exclude each other") {
		t.Fatalf("both issuers: %v", err)
	}
}
