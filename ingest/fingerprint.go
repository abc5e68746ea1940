package ingest

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"log/slog"
	"strings"

	"github.com/gatewatch/gatewatch/internal/config"
)

// minSecretBytes is the shortest token secret accepted: HMAC keys shorter than the
// hash's 32-byte output weaken it, and a short secret is usually a mistake.
const minSecretBytes = 16

// A TokenSecret is the HMAC key for token fingerprints. It prints as <redacted> in every
// form, so it cannot reach a log or config dump by accident.
type TokenSecret struct {
	key    []byte
	random bool
}

// NewTokenSecret returns a secret holding a copy of key.
func NewTokenSecret(key []byte) (TokenSecret, error) {
	if len(key) < minSecretBytes {
		return TokenSecret{}, fmt.Errorf("ingest: token secret has %d bytes, want at least %d", len(key), minSecretBytes)
	}
	return TokenSecret{key: bytes.Clone(key)}, nil
}

// RandomTokenSecret returns a fresh random secret. Fingerprints made with it match
// nothing made in another run: for one-off parsing only.
func RandomTokenSecret() TokenSecret {
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never fails on supported platforms
	return TokenSecret{key: key, random: true}
}

// LoadTokenSecret reads the secret from a file (trailing newlines trimmed), or failing
// that from the named environment variable, through the loader every secret shares.
// Both empty is an error.
func LoadTokenSecret(file, env string) (TokenSecret, error) {
	s, err := config.SecretRef{Key: "token_secret", File: file, Env: env}.Load(minSecretBytes)
	if err != nil {
		return TokenSecret{}, fmt.Errorf("ingest: %w", err)
	}
	return NewTokenSecret([]byte(s.Reveal()))
}

// IsZero reports whether no secret was set.
func (s TokenSecret) IsZero() bool { return len(s.key) == 0 }

// Random reports whether the secret came from RandomTokenSecret.
func (s TokenSecret) Random() bool { return s.random }

func (TokenSecret) String() string               { return "<redacted>" }
func (TokenSecret) GoString() string             { return "<redacted>" }
func (TokenSecret) LogValue() slog.Value         { return slog.StringValue("<redacted>") }
func (TokenSecret) MarshalJSON() ([]byte, error) { return []byte(`"<redacted>"`), nil }
func (TokenSecret) MarshalYAML() (any, error)    { return "<redacted>", nil }
func (TokenSecret) MarshalText() ([]byte, error) { return []byte("<redacted>"), nil }
func (s TokenSecret) newFingerprinter() *fingerprinter {
	return &fingerprinter{mac: hmac.New(sha256.New, s.key)}
}

// fpBytes is how much of the HMAC a fingerprint keeps: 128 bits, as DESIGN.md fixes.
const fpBytes = 16

// A fingerprinter computes keyed token fingerprints. It is owned by one parser and is
// not safe for concurrent use; it reuses its HMAC state and scratch space, so
// fingerprinting allocates nothing.
type fingerprinter struct {
	mac hash.Hash
	sum [sha256.Size]byte
	hex [2 * fpBytes]byte
}

// Sum returns the hex fingerprint of credential, in scratch space valid until the next call.
func (f *fingerprinter) Sum(credential []byte) []byte {
	f.mac.Reset()
	f.mac.Write(credential)
	f.mac.Sum(f.sum[:0])
	hex.Encode(f.hex[:], f.sum[:fpBytes])
	return f.hex[:]
}

// bearer strips an auth scheme ("Bearer ", "Token ", "Basic ") from an Authorization value,
// so the same token fingerprints the same whatever the client's capitalisation. Values a
// gateway substituted (Kong's REDACTED) and "-" mean no credential.
func bearer(v []byte) []byte {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || string(v) == "-" || string(v) == "REDACTED" {
		return nil
	}
	if i := bytes.IndexByte(v, ' '); i > 0 {
		scheme := v[:i]
		if isAuthScheme(scheme) {
			v = bytes.TrimSpace(v[i+1:])
		}
	}
	return v
}

func isAuthScheme(s []byte) bool {
	for _, k := range [...]string{"bearer", "token", "basic", "apikey", "api-key", "digest"} {
		if len(s) == len(k) && strings.EqualFold(string(s), k) {
			return true
		}
	}
	return false
}
