// Package auth issues and validates OAuth2 access tokens (JWT, RFC 9068).
//
// # Issuer
//
// Issuer is the dev stack's OAuth2 authorization server for the
// client-credentials grant: it signs ES256 access tokens with a rotating
// set of P-256 keys and publishes their public halves as a JWKS. Rotate
// adds a new signing key and keeps the previous RetainKeys keys in the JWKS
// so tokens signed before a rotation still validate until they expire.
//
// # Validator
//
// Validator accepts tokens from any issuer through a KeySource (the
// issuer's JWKS over HTTP with HTTPKeySource, or an in-process Issuer) and
// applies the RFC 8725 checks: the algorithm is pinned per key from the
// key set (never taken from the token header); "none", HMAC algorithms and
// keys without a usable pinned algorithm are rejected; the kid must name a
// key of the cached set, and an unknown kid triggers at most one refetch
// per MinRefetchInterval; typ must be at+jwt; iss must match exactly; aud
// must contain the API's audience; exp is required and exp/nbf are checked
// with a small skew. Scopes and the lender come from verified claims only.
//
// # Errors
//
// Every rejection wraps ErrUnauthorized with the reason (safe to log, never
// contains the token). Issuer and Validator are safe for concurrent use;
// HTTPKeySource fetches synchronously in the caller's goroutine (guarded
// by a mutex and rate limit) and starts no goroutines.
package auth
