package schemas

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/sr"
	"golang.org/x/sync/singleflight"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// URLs of the schema registry (Confluent REST API); the first that
	// answers is used. Default http://127.0.0.1:8081.
	URLs []string
	// RequestTimeout bounds each HTTP request. Default 10s.
	RequestTimeout time.Duration
	// MaxCachedSchemas bounds the id → schema text cache. Default 1024.
	MaxCachedSchemas int
	// UnknownIDCacheTTL is how long an id the registry did not know is
	// remembered as unknown, so a run of corrupt records does not become a
	// run of registry requests. Default 10s.
	UnknownIDCacheTTL time.Duration
	// HTTPClient, if set, is used instead of a default client (for TLS or
	// auth); RequestTimeout then applies through the request context.
	HTTPClient *http.Client
}

func (c *ClientConfig) setDefaults() {
	if len(c.URLs) == 0 {
		c.URLs = []string{"http://127.0.0.1:8081"}
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.MaxCachedSchemas == 0 {
		c.MaxCachedSchemas = 1024
	}
	if c.UnknownIDCacheTTL == 0 {
		c.UnknownIDCacheTTL = 10 * time.Second
	}
}

// Validate reports the first invalid field, after defaults are applied.
func (c ClientConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.RequestTimeout < 0:
		return fmt.Errorf("schemas: ClientConfig.RequestTimeout %v is negative", c.RequestTimeout)
	case c.MaxCachedSchemas < 1:
		return fmt.Errorf("schemas: ClientConfig.MaxCachedSchemas %d must be at least 1", c.MaxCachedSchemas)
	case c.UnknownIDCacheTTL < 0:
		return fmt.Errorf("schemas: ClientConfig.UnknownIDCacheTTL %v is negative", c.UnknownIDCacheTTL)
	}
	for _, u := range c.URLs {
		if u == "" {
			return errors.New("schemas: ClientConfig.URLs has an empty URL")
		}
	}
	return nil
}

// Client talks to a schema registry over the Confluent REST API (through
// franz-go's sr.Client) and caches schema texts by id. It is safe for
// concurrent use; share one per process.
type Client struct {
	sr    *sr.Client
	cfg   ClientConfig
	group singleflight.Group
	mu    struct {
		sync.Mutex
		byID    map[int]string    // guarded by mu; at most MaxCachedSchemas
		unknown map[int]time.Time // guarded by mu; id → when it was found unknown
	}
}

// NewClient returns a Client for cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	httpcl := cfg.HTTPClient
	if httpcl == nil {
		httpcl = &http.Client{Timeout: cfg.RequestTimeout}
	}
	cl, err := sr.NewClient(sr.URLs(cfg.URLs...), sr.HTTPClient(httpcl), sr.UserAgent("loanflow"))
	if err != nil {
		return nil, fmt.Errorf("schemas: creating registry client: %w", err)
	}
	c := &Client{sr: cl, cfg: cfg}
	c.mu.byID = make(map[int]string)
	c.mu.unknown = make(map[int]time.Time)
	return c, nil
}

// SR returns the underlying franz-go registry client, for calls this
// package does not wrap (compatibility config, deletes).
func (c *Client) SR() *sr.Client { return c.sr }

func (c *Client) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, c.cfg.RequestTimeout)
}

// Register registers schema (Avro) under subject and returns its id; a
// schema already registered under the subject keeps its id. A schema the
// subject's compatibility level refuses fails with ErrIncompatible, and the
// registry's message names the offending field.
func (c *Client) Register(ctx context.Context, subject, schema string) (int, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	id, err := c.sr.RegisterSchema(ctx, subject, sr.Schema{Schema: schema, Type: sr.TypeAvro}, -1, -1)
	if err != nil {
		return -1, classify("registering schema", subject, -1, err)
	}
	c.remember(id, schema)
	return id, nil
}

// Lookup returns the id of schema under subject, or an error of kind
// ErrNotRegistered if the subject does not hold it.
func (c *Client) Lookup(ctx context.Context, subject, schema string) (int, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	ss, err := c.sr.LookupSchema(ctx, subject, sr.Schema{Schema: schema, Type: sr.TypeAvro})
	if err != nil {
		return -1, classify("looking up schema", subject, -1, err)
	}
	c.remember(ss.ID, schema)
	return ss.ID, nil
}

// SchemaText returns the text of the schema with the given id, from the
// cache or the registry. Concurrent calls for one id share one request.
func (c *Client) SchemaText(ctx context.Context, id int) (string, error) {
	c.mu.Lock()
	text, ok := c.mu.byID[id]
	seen, unknown := c.mu.unknown[id]
	c.mu.Unlock()
	if ok {
		return text, nil
	}
	if unknown && time.Since(seen) < c.cfg.UnknownIDCacheTTL {
		return "", newErr("fetching schema", ErrUnknownSchemaID, "", id, errors.New("not found in the registry (cached)"))
	}
	v, err, _ := c.group.Do(strconv.Itoa(id), func() (any, error) {
		ctx, cancel := c.ctx(context.WithoutCancel(ctx))
		defer cancel()
		s, err := c.sr.SchemaByID(ctx, id)
		if err != nil {
			e := classify("fetching schema", "", id, err)
			if e.Kind == ErrUnknownSchemaID {
				c.forget(id)
			}
			return "", e
		}
		if s.Type != sr.TypeAvro {
			return "", newErr("fetching schema", ErrInvalidSchema, "", id, fmt.Errorf("schema type is %s, not AVRO", s.Type))
		}
		c.remember(id, s.Schema)
		return s.Schema, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

func (c *Client) remember(id int, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.mu.byID[id]; !ok && len(c.mu.byID) >= c.cfg.MaxCachedSchemas {
		for k := range c.mu.byID { // evict an arbitrary entry
			delete(c.mu.byID, k)
			break
		}
	}
	c.mu.byID[id] = text
	delete(c.mu.unknown, id)
}

func (c *Client) forget(id int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.mu.unknown) >= c.cfg.MaxCachedSchemas {
		clear(c.mu.unknown)
	}
	c.mu.unknown[id] = time.Now()
}

// classify maps a registry client error to an *Error of the right kind.
func classify(op, subject string, id int, err error) *Error {
	var re *sr.ResponseError
	if !errors.As(err, &re) {
		// Transport errors, timeouts, cancellations: the registry did not
		// answer; the record is not at fault.
		return newErr(op, ErrRegistryUnavailable, subject, id, err)
	}
	cause := fmt.Errorf("registry answered %d (error code %d): %s", re.StatusCode, re.ErrorCode, re.Message)
	switch {
	case re.StatusCode == http.StatusConflict:
		return newErr(op, ErrIncompatible, subject, id, cause)
	case re.StatusCode == http.StatusUnprocessableEntity:
		return newErr(op, ErrInvalidSchema, subject, id, cause)
	case re.StatusCode == http.StatusNotFound && id >= 0:
		return newErr(op, ErrUnknownSchemaID, subject, id, cause)
	case re.StatusCode == http.StatusNotFound:
		return newErr(op, ErrNotRegistered, subject, id, cause)
	default:
		// 5xx, 408, 429, and auth failures (401/403, a configuration
		// problem): retry rather than dead-letter a good record.
		return newErr(op, ErrRegistryUnavailable, subject, id, cause)
	}
}
