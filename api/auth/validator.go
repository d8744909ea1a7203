package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

var (
	// ErrUnauthorized wraps every token rejection.
	ErrUnauthorized = errors.New("auth: unauthorized")
	// ErrUnknownKey is returned by a KeySource for a kid it does not hold.
	ErrUnknownKey = errors.New("auth: unknown key id")
)

// KeySource yields verification keys by kid. Key may refresh its set when
// kid is unknown (subject to its own rate limit).
type KeySource interface {
	Key(ctx context.Context, kid string) (jwk.Key, error)
}

// Key implements KeySource for the in-process dev issuer.
func (is *Issuer) Key(_ context.Context, kid string) (jwk.Key, error) {
	if k, ok := is.PublicSet().LookupKeyID(kid); ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// HTTPKeySource caches an issuer's JWKS fetched over HTTP; an unknown kid
// refetches at most once per MinRefetchInterval, and a set older than
// MaxAge is refetched on the next lookup, so a key the issuer withdrew
// stops verifying. A failed refresh keeps the cached set for at most
// MaxStale after the last successful fetch, then drops it (tokens are
// refused until the issuer answers again). Keys whose "use" is not "sig"
// never verify.
type HTTPKeySource struct {
	URL                string
	Client             *http.Client
	MinRefetchInterval time.Duration // default 30s
	MaxAge             time.Duration // default 15m
	MaxStale           time.Duration // default 1h
	MaxBodyBytes       int64         // default 1 MiB
	// Now is the clock; default time.Now.
	Now func() time.Time

	mu struct {
		sync.Mutex
		set       jwk.Set
		lastFetch time.Time
		lastOK    time.Time
	}
}

func (s *HTTPKeySource) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// lookupLocked finds kid in the cached set, refusing keys not meant for
// signatures.
func (s *HTTPKeySource) lookupLocked(kid string) (jwk.Key, bool) {
	if s.mu.set == nil {
		return nil, false
	}
	k, ok := s.mu.set.LookupKeyID(kid)
	if !ok {
		return nil, false
	}
	if use, has := k.KeyUsage(); has && use != "sig" {
		return nil, false
	}
	return k, true
}

// ValidJWKSURL reports why a JWKS URL is not acceptable: it must be https,
// except on a loopback host (development, tests).
func ValidJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("auth: JWKS URL: %w", err)
	}
	if u.Scheme == "https" {
		return nil
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); u.Scheme == "http" && (host == "localhost" || (ip != nil && ip.IsLoopback())) {
		return nil
	}
	return fmt.Errorf("auth: JWKS URL %q must be https:// (plain http only on a loopback host): keys fetched in clear text can be replaced in transit", raw)
}

// Key returns the key named kid from the cached set.
func (s *HTTPKeySource) Key(ctx context.Context, kid string) (jwk.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.mu.set != nil && now.Sub(s.mu.lastFetch) >= s.maxAge() {
		if err := s.fetchLocked(ctx); err != nil && now.Sub(s.mu.lastOK) > s.maxStale() {
			s.mu.set = nil // too stale to trust: refuse until the issuer answers
		}
	}
	if k, ok := s.lookupLocked(kid); ok {
		return k, nil
	}
	if !s.mu.lastFetch.IsZero() && now.Sub(s.mu.lastFetch) < s.minInterval() {
		return nil, ErrUnknownKey
	}
	if err := s.fetchLocked(ctx); err != nil {
		return nil, err
	}
	if k, ok := s.lookupLocked(kid); ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

func (s *HTTPKeySource) maxStale() time.Duration {
	if s.MaxStale > 0 {
		return s.MaxStale
	}
	return time.Hour
}

func (s *HTTPKeySource) minInterval() time.Duration {
	if s.MinRefetchInterval > 0 {
		return s.MinRefetchInterval
	}
	return 30 * time.Second
}

func (s *HTTPKeySource) maxAge() time.Duration {
	if s.MaxAge > 0 {
		return s.MaxAge
	}
	return 15 * time.Minute
}

func (s *HTTPKeySource) fetchLocked(ctx context.Context) error {
	s.mu.lastFetch = s.now()
	c := s.Client
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		return fmt.Errorf("auth: JWKS request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("auth: fetching JWKS %s: %w", s.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("auth: fetching JWKS %s: status %d", s.URL, resp.StatusCode)
	}
	limit := s.MaxBodyBytes
	if limit <= 0 {
		limit = 1 << 20
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return fmt.Errorf("auth: reading JWKS: %w", err)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return fmt.Errorf("auth: parsing JWKS: %w", err)
	}
	s.mu.set, s.mu.lastOK = set, s.mu.lastFetch
	return nil
}

// ValidatorConfig configures token validation.
type ValidatorConfig struct {
	Issuer   string // exact iss
	Audience string // must be in aud
	Keys     KeySource
	// Skew tolerated on exp/nbf/iat. Default 30s, at most 5m.
	Skew time.Duration
	// LenderClaim names the claim holding the lender id. Default lender_id.
	LenderClaim string
	// CacheMaxAge bounds how long a verified token is remembered (never
	// past its exp), so a withdrawn key stops being honoured. Default 1m.
	CacheMaxAge time.Duration
	// MaxLifetime caps the lifetime the API accepts, whatever the issuer
	// granted: exp - iat (or exp - now without iat) beyond it is refused.
	// Default 1h.
	MaxLifetime time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Validate reports a bad field.
func (c ValidatorConfig) Validate() error {
	switch {
	case c.Issuer == "":
		return errors.New("auth: ValidatorConfig.Issuer is required")
	case c.Audience == "":
		return errors.New("auth: ValidatorConfig.Audience is required")
	case c.Keys == nil:
		return errors.New("auth: ValidatorConfig.Keys is required")
	case c.Skew < 0 || c.Skew > 5*time.Minute:
		return errors.New("auth: ValidatorConfig.Skew must be within 0..5m")
	}
	return nil
}

// Validator checks access tokens. Verified tokens are remembered (keyed by
// their SHA-256, bounded, never past exp) so a client reusing its token
// does not pay a signature verification per request.
type Validator struct {
	cfg ValidatorConfig
	mu  struct {
		sync.Mutex
		seen map[[32]byte]cachedPrincipal
	}
}

type cachedPrincipal struct {
	p   Principal
	exp time.Time
}

// maxCachedTokens bounds the verified-token cache.
const maxCachedTokens = 10000

func (v *Validator) cached(key [32]byte) (Principal, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c, ok := v.mu.seen[key]
	if !ok || !v.cfg.Now().Before(c.exp) {
		return Principal{}, false
	}
	return c.p, true
}

func (v *Validator) remember(key [32]byte, p Principal, exp time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mu.seen == nil || len(v.mu.seen) >= maxCachedTokens {
		v.mu.seen = make(map[[32]byte]cachedPrincipal)
	}
	v.mu.seen[key] = cachedPrincipal{p: p, exp: exp}
}

// NewValidator returns a validator for cfg.
func NewValidator(cfg ValidatorConfig) (*Validator, error) {
	if cfg.Skew == 0 {
		cfg.Skew = 30 * time.Second
	}
	if cfg.LenderClaim == "" {
		cfg.LenderClaim = ClaimLender
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CacheMaxAge <= 0 {
		cfg.CacheMaxAge = time.Minute
	}
	if cfg.MaxLifetime <= 0 {
		cfg.MaxLifetime = time.Hour
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Validator{cfg: cfg}, nil
}

// Principal is the verified caller.
type Principal struct {
	Subject string
	Lender  string
	Scopes  map[string]bool
}

// Has reports whether the principal holds scope. Admin holds every scope
// except pii:read, which is only ever granted explicitly: decrypting a
// customer's full PII is never a side effect of operating the platform.
func (p Principal) Has(scope string) bool {
	if scope == ScopePIIRead {
		return p.Scopes[ScopePIIRead]
	}
	return p.Scopes[scope] || p.Scopes[ScopeAdmin]
}

func reject(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnauthorized}, args...)...)
}

// pinnedAlg returns the one algorithm a key may verify: its alg member, or
// for EC and OKP keys without one the algorithm their curve implies.
func pinnedAlg(k jwk.Key) (jwa.SignatureAlgorithm, error) {
	if a, ok := k.Algorithm(); ok {
		sa, ok := jwa.LookupSignatureAlgorithm(a.String())
		if !ok {
			return sa, fmt.Errorf("key alg %q is not a signature algorithm", a)
		}
		return sa, nil
	}
	if ek, ok := k.(jwk.ECDSAPublicKey); ok {
		crv, _ := ek.Crv()
		switch crv {
		case jwa.P256():
			return jwa.ES256(), nil
		case jwa.P384():
			return jwa.ES384(), nil
		case jwa.P521():
			return jwa.ES512(), nil
		}
	}
	if k.KeyType() == jwa.OKP() {
		return jwa.EdDSA(), nil
	}
	return jwa.EmptySignatureAlgorithm(), errors.New("key has no alg and none can be pinned")
}

var allowedAlgs = map[string]bool{"ES256": true, "ES384": true, "ES512": true, "RS256": true, "RS384": true, "RS512": true, "PS256": true, "PS384": true, "PS512": true, "EdDSA": true}

// header checks the protected header and returns the key to verify with.
func (v *Validator) header(ctx context.Context, raw []byte) (jwk.Key, jwa.SignatureAlgorithm, error) {
	none := jwa.EmptySignatureAlgorithm()
	msg, err := jws.Parse(raw, jws.WithCompact())
	if err != nil {
		return nil, none, reject("malformed token")
	}
	sigs := msg.Signatures()
	if len(sigs) != 1 {
		return nil, none, reject("want exactly one signature")
	}
	h := sigs[0].ProtectedHeaders()
	hAlg, _ := h.Algorithm()
	if !allowedAlgs[hAlg.String()] {
		return nil, none, reject("algorithm %q not accepted", hAlg.String())
	}
	if typ, _ := h.Type(); !strings.EqualFold(typ, TokenType) && !strings.EqualFold(typ, "application/"+TokenType) {
		return nil, none, reject("typ %q is not %s", typ, TokenType)
	}
	if crit, ok := h.Critical(); ok && len(crit) > 0 {
		return nil, none, reject("unsupported crit header")
	}
	kid, ok := h.KeyID()
	if !ok || kid == "" {
		return nil, none, reject("token has no kid")
	}
	key, err := v.cfg.Keys.Key(ctx, kid)
	if err != nil {
		return nil, none, reject("kid %q: %v", kid, err)
	}
	alg, err := pinnedAlg(key)
	if err != nil || !allowedAlgs[alg.String()] {
		return nil, none, reject("kid %q has no acceptable pinned algorithm", kid)
	}
	if alg != hAlg {
		return nil, none, reject("header alg %s differs from key's pinned %s", hAlg, alg)
	}
	return key, alg, nil
}

// Validate verifies a compact JWS access token and returns its principal.
func (v *Validator) Validate(ctx context.Context, token string) (Principal, error) {
	raw := []byte(token)
	if len(raw) == 0 || len(raw) > 16<<10 {
		return Principal{}, reject("empty or oversized token")
	}
	sum := sha256.Sum256(raw)
	if p, ok := v.cached(sum); ok {
		return p, nil
	}
	key, alg, err := v.header(ctx, raw)
	if err != nil {
		return Principal{}, err
	}
	tok, err := jwt.Parse(raw,
		jwt.WithKey(alg, key),
		jwt.WithValidate(true),
		jwt.WithIssuer(v.cfg.Issuer),
		jwt.WithAudience(v.cfg.Audience),
		jwt.WithAcceptableSkew(v.cfg.Skew),
		jwt.WithClock(jwt.ClockFunc(v.cfg.Now)),
		jwt.WithRequiredClaim("exp"),
	)
	if err != nil {
		return Principal{}, reject("%v", err)
	}
	exp, _ := tok.Expiration()
	start := v.cfg.Now()
	if iat, ok := tok.IssuedAt(); ok && iat.Before(start) {
		start = iat
	}
	if exp.Sub(start) > v.cfg.MaxLifetime+v.cfg.Skew {
		return Principal{}, reject("token lifetime %v exceeds the accepted maximum %v", exp.Sub(start).Round(time.Second), v.cfg.MaxLifetime)
	}
	p, err := v.principal(tok)
	if err != nil {
		return p, err
	}
	if exp, ok := tok.Expiration(); ok {
		if limit := v.cfg.Now().Add(v.cfg.CacheMaxAge); limit.Before(exp) {
			exp = limit
		}
		v.remember(sum, p, exp)
	}
	return p, nil
}

func (v *Validator) principal(tok jwt.Token) (Principal, error) {
	sub, _ := tok.Subject()
	p := Principal{Subject: sub, Scopes: map[string]bool{}}
	var scope string
	if err := tok.Get(ClaimScope, &scope); err == nil {
		for _, s := range strings.Fields(scope) {
			p.Scopes[s] = true
		}
	}
	var lender string
	if err := tok.Get(v.cfg.LenderClaim, &lender); err == nil {
		p.Lender = lender
	}
	if p.Lender == "" && !p.Scopes[ScopeAdmin] {
		return Principal{}, reject("token has no %s claim", v.cfg.LenderClaim)
	}
	return p, nil
}
