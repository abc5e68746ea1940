package ingest

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
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

// DataDirSecretFile is the name of the token secret DataDirTokenSecret keeps in a
// data directory.
const DataDirSecretFile = "token-secret"

// DataDirTokenSecret returns the token secret kept in dir, creating it on first use:
// 32 random bytes, written as hex to dir/token-secret, mode 0600. With no secret
// configured, demo and replay use it, so fingerprints, and the alert ids and keys built
// on them, are the same from run to run (a random per-run key changed them every time,
// and notify paged the same incidents again). An operator can point
// ingest.token_secret_file at the file to keep the same fingerprints for good. created
// reports that this call made the file. A file others may read is made 0600, or refused.
func DataDirTokenSecret(dir string) (s TokenSecret, created bool, err error) {
	if dir == "" {
		return TokenSecret{}, false, errors.New("ingest: token secret: no data directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return TokenSecret{}, false, fmt.Errorf("ingest: token secret: %w", err)
	}
	path := filepath.Join(dir, DataDirSecretFile)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		if created, err = createSecretFile(dir, path); err != nil {
			return TokenSecret{}, false, fmt.Errorf("ingest: token secret %s: %w", path, err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return TokenSecret{}, false, fmt.Errorf("ingest: token secret: %w", err)
	}
	err = ownerOnly(f)
	f.Close()
	if err != nil {
		return TokenSecret{}, false, fmt.Errorf("ingest: token secret %s: %w", path, err)
	}
	s, err = LoadTokenSecret(path, "")
	return s, created, err
}

// createSecretFile writes a new random secret to path, whole or not at all: it is
// written to a temporary file and linked into place, so two processes starting at once
// end up with the same secret (the second link fails and that process reads the first).
func createSecretFile(dir, path string) (bool, error) {
	tmp, err := os.CreateTemp(dir, "."+DataDirSecretFile+"-*") // mode 0600
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never fails on supported platforms
	_, err = fmt.Fprintf(tmp, "%x\n", key)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// KeyFingerprint returns what the parsers make of a raw API key under s: its
// client_key (when the log names no consumer or key id) and its token_fp (when no bearer
// token is logged). Surrounding blanks are dropped, as the parsers drop them.
func (s TokenSecret) KeyFingerprint(key []byte) string {
	return string(s.newFingerprinter().Sum(bytes.TrimSpace(key)))
}

// TokenFingerprint returns the token_fp the parsers give a bearer token, or an
// Authorization value with its scheme ("Bearer ...", which is dropped as they drop
// it), under s; "" for a value that holds no credential.
func (s TokenSecret) TokenFingerprint(authorization []byte) string {
	tok := bearer(authorization)
	if len(tok) == 0 {
		return ""
	}
	return string(s.newFingerprinter().Sum(tok))
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
	return &fingerprinter{mac: hmac.New(sha256.New, s.key), memo: memo[[2 * fpBytes]byte]{size: fpMemoSlots}}
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
	// With memoize, memo remembers the fingerprints of recent credentials: a client sends
	// the same token with every request, and its HMAC was a tenth of a file replay's
	// CPU time.
	memo    memo[[2 * fpBytes]byte]
	memoize bool
}

// fpMemoSlots is how many credentials a fingerprinter remembers: a few thousand
// clients fit in its 208 KiB.
const fpMemoSlots = 4096

// Sum returns the hex fingerprint of credential, in scratch space valid until the next call.
func (f *fingerprinter) Sum(credential []byte) []byte {
	var m *[2 * fpBytes]byte
	if f.memoize && len(credential) > 0 {
		var hit bool
		if m, hit = f.memo.get(unsafeString(credential), nil); hit {
			return m[:]
		}
	}
	f.mac.Reset()
	f.mac.Write(credential)
	f.mac.Sum(f.sum[:0])
	hex.Encode(f.hex[:], f.sum[:fpBytes])
	if m != nil {
		*m = f.hex
	}
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
