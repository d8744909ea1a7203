package schemaregistry

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Config configures a Registry. The zero value plus Brokers is usable:
// defaults fill the rest.
type Config struct {
	// Brokers are the Kafka seed brokers (host:port). Required.
	Brokers []string
	// Listen is the HTTP listen address. Default 127.0.0.1:8081; port 0
	// picks a free port (see Registry.Addr).
	Listen string
	// Topic is the compacted topic the registry stores schemas in. Default
	// _schemas. One registry writes a topic at a time (see doc.go).
	Topic string
	// TransactionalID is the Kafka transactional id the registry writes
	// with. A registry starting with the same id fences the previous one,
	// so one registry writes a topic at a time. Default
	// loanflow-schema-registry-<Topic>.
	TransactionalID string
	// ReplicationFactor of the topic when the registry creates it; -1 (the
	// default) uses the broker's default.
	ReplicationFactor int
	// DefaultCompatibility applies to subjects without their own level
	// until PUT /config changes the global level. Default BACKWARD.
	DefaultCompatibility string
	// MaxSchemaBytes is the largest schema text accepted. Default 1 MiB.
	MaxSchemaBytes int
	// MaxSchemas bounds the number of distinct schema ids. Default 10000.
	MaxSchemas int
	// MaxVersionsPerSubject bounds versions kept per subject, soft-deleted
	// ones included. Default 1000.
	MaxVersionsPerSubject int
	// LoadTimeout bounds reading the topic at start. Default 2m.
	LoadTimeout time.Duration
	// WriteTimeout bounds one write: producing to the topic and reading it
	// back. Default 30s.
	WriteTimeout time.Duration
	// ShutdownTimeout bounds draining HTTP requests on stop. Default 10s.
	ShutdownTimeout time.Duration
	// Logger receives operational logs. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8081"
	}
	if c.Topic == "" {
		c.Topic = "_schemas"
	}
	if c.TransactionalID == "" {
		c.TransactionalID = "loanflow-schema-registry-" + c.Topic
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = -1
	}
	if c.DefaultCompatibility == "" {
		c.DefaultCompatibility = CompatBackward
	}
	if c.MaxSchemaBytes == 0 {
		c.MaxSchemaBytes = 1 << 20
	}
	if c.MaxSchemas == 0 {
		c.MaxSchemas = 10000
	}
	if c.MaxVersionsPerSubject == 0 {
		c.MaxVersionsPerSubject = 1000
	}
	if c.LoadTimeout == 0 {
		c.LoadTimeout = 2 * time.Minute
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first invalid field (after applying defaults), with
// what to change.
func (c Config) Validate() error {
	c.setDefaults()
	if len(c.Brokers) == 0 {
		return errors.New("schemaregistry: Config.Brokers is empty; give the Kafka seed brokers (host:port)")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("schemaregistry: Config.Listen %q is not host:port: %v", c.Listen, err)
	}
	if _, ok := parseCompat(c.DefaultCompatibility); !ok {
		return fmt.Errorf("schemaregistry: Config.DefaultCompatibility %q is not one of %v", c.DefaultCompatibility, compatLevels)
	}
	switch {
	case c.ReplicationFactor < -1 || c.ReplicationFactor > 32767:
		return fmt.Errorf("schemaregistry: Config.ReplicationFactor %d must be -1 or 1..32767", c.ReplicationFactor)
	case c.MaxSchemaBytes < 64:
		return fmt.Errorf("schemaregistry: Config.MaxSchemaBytes %d is below 64", c.MaxSchemaBytes)
	case c.MaxSchemas < 1:
		return fmt.Errorf("schemaregistry: Config.MaxSchemas %d must be at least 1", c.MaxSchemas)
	case c.MaxVersionsPerSubject < 1:
		return fmt.Errorf("schemaregistry: Config.MaxVersionsPerSubject %d must be at least 1", c.MaxVersionsPerSubject)
	case c.LoadTimeout < 0 || c.WriteTimeout < 0 || c.ShutdownTimeout < 0:
		return errors.New("schemaregistry: Config timeouts must not be negative")
	}
	return nil
}
