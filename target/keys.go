package target

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/argon2"

	"github.com/virtkeep/virtkeep/target/secret"
)

// Key is a repository master key. It never prints.
type Key struct{ b [32]byte }

func (Key) String() string   { return "target.Key(redacted)" }
func (Key) GoString() string { return "target.Key(redacted)" }

// MarshalJSON refuses: a key is never serialised by accident.
func (Key) MarshalJSON() ([]byte, error) { return nil, errors.New("target: refusing to marshal a key") }

// NewKey returns a random master key.
func NewKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k.b[:]); err != nil {
		return k, fmt.Errorf("target: random key: %w", err)
	}
	return k, nil
}

type subkeys struct{ enc, id [32]byte }

func (k Key) derive(repoID string) (*subkeys, error) {
	var s subkeys
	for _, d := range []struct {
		out  *[32]byte
		info string
	}{{&s.enc, "virtkeep enc"}, {&s.id, "virtkeep id"}} {
		b, err := hkdf.Key(sha256.New, k.b[:], []byte(repoID), d.info, 32)
		if err != nil {
			return nil, err
		}
		copy(d.out[:], b)
	}
	return &s, nil
}

// keyCheck is stored in config so a wrong key is told apart from damage.
func (s *subkeys) keyCheck() string {
	m := hmac.New(sha256.New, s.id[:])
	m.Write([]byte("virtkeep key check"))
	return hex.EncodeToString(m.Sum(nil))
}

// ErrPassphraseNeeded is wrapped by ReadKeyFile's error for a key file
// wrapped under a passphrase when none was given.
var ErrPassphraseNeeded = errors.New("the key file needs a passphrase")

// ErrWrongKey is returned when a key does not open a repository or key file.
var ErrWrongKey = errors.New("wrong key or passphrase")

type keyFile struct {
	Version   int    `json:"version"`
	KDF       string `json:"kdf"`
	Key       string `json:"key,omitempty"`
	Salt      string `json:"salt,omitempty"`
	Time      uint32 `json:"time,omitempty"`
	MemoryKiB uint32 `json:"memory_kib,omitempty"`
	Threads   uint8  `json:"threads,omitempty"`
	Wrapped   string `json:"wrapped,omitempty"`
}

// KDFParams are Argon2id's costs for passphrase-protected key files.
type KDFParams struct {
	Time      uint32
	MemoryKiB uint32
	Threads   uint8
}

// DefaultKDF costs about 0.1–0.3 s and 64 MiB on a server core.
var DefaultKDF = KDFParams{Time: 3, MemoryKiB: 64 << 10, Threads: 2}

// MarshalKeyFile encodes k as a key file. With a passphrase the key is
// wrapped under Argon2id(passphrase); without, it is stored as is
// (protect the file).
func MarshalKeyFile(k Key, passphrase []byte, p KDFParams) ([]byte, error) {
	kf := keyFile{Version: 1, KDF: "none"}
	if len(passphrase) == 0 {
		kf.Key = base64.StdEncoding.EncodeToString(k.b[:])
	} else {
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return nil, err
		}
		kek := argon2.IDKey(passphrase, salt, p.Time, p.MemoryKiB, p.Threads, 32)
		block, _ := aes.NewCipher(kek)
		gcm, _ := cipher.NewGCM(block)
		nonce := make([]byte, gcm.NonceSize())
		if _, err := rand.Read(nonce); err != nil {
			return nil, err
		}
		kf = keyFile{Version: 1, KDF: "argon2id", Salt: base64.StdEncoding.EncodeToString(salt),
			Time: p.Time, MemoryKiB: p.MemoryKiB, Threads: p.Threads,
			Wrapped: base64.StdEncoding.EncodeToString(gcm.Seal(nonce, nonce, k.b[:], []byte("virtkeep key file")))}
	}
	b, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// WriteKeyFile writes k to path with mode 0600, refusing to replace an
// existing file (see MarshalKeyFile).
func WriteKeyFile(path string, k Key, passphrase []byte, p KDFParams) error {
	b, err := MarshalKeyFile(k, passphrase, p)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("target: key file: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("target: key file %s: %w", path, err)
	}
	return nil
}

// ReadKeyFile reads a key file written by WriteKeyFile. A file not owned
// by us or open to group or others is refused (ReadSecretFile): a key must
// not leak through permissions.
func ReadKeyFile(path string, passphrase []byte) (Key, error) {
	b, err := secret.ReadFile(path)
	if err != nil {
		return Key{}, ConfigError(fmt.Errorf("target: key file: %w", err))
	}
	k, err := parseKeyFile(path, b, passphrase)
	if err != nil && !errors.Is(err, ErrWrongKey) && !errors.Is(err, ErrPassphraseNeeded) {
		err = ConfigError(err)
	}
	return k, err
}

func parseKeyFile(path string, b, passphrase []byte) (Key, error) {
	var k Key
	var kf keyFile
	if err := json.Unmarshal(b, &kf); err != nil {
		return k, fmt.Errorf("target: key file %s: not a virtkeep key file: %v", path, err)
	}
	if kf.Version != 1 {
		return k, fmt.Errorf("target: key file %s: version %d is not supported", path, kf.Version)
	}
	switch kf.KDF {
	case "none":
		raw, err := base64.StdEncoding.DecodeString(kf.Key)
		if err != nil || len(raw) != 32 {
			return k, fmt.Errorf("target: key file %s: key field is not 32 base64-encoded bytes", path)
		}
		copy(k.b[:], raw)
		return k, nil
	case "argon2id":
		if len(passphrase) == 0 {
			return k, fmt.Errorf("target: key file %s: %w", path, ErrPassphraseNeeded)
		}
		salt, err1 := base64.StdEncoding.DecodeString(kf.Salt)
		wrapped, err2 := base64.StdEncoding.DecodeString(kf.Wrapped)
		if err1 != nil || err2 != nil || len(salt) < 8 || len(wrapped) != 12+32+16 ||
			kf.Time == 0 || kf.Time > 64 || kf.MemoryKiB < 8 || kf.MemoryKiB > 4<<20 || kf.Threads == 0 {
			return k, fmt.Errorf("target: key file %s: malformed argon2id parameters", path)
		}
		kek := argon2.IDKey(passphrase, salt, kf.Time, kf.MemoryKiB, kf.Threads, 32)
		block, _ := aes.NewCipher(kek)
		gcm, _ := cipher.NewGCM(block)
		raw, err := gcm.Open(nil, wrapped[:12], wrapped[12:], []byte("virtkeep key file"))
		if err != nil {
			return k, fmt.Errorf("target: key file %s: %w", path, ErrWrongKey)
		}
		copy(k.b[:], raw)
		return k, nil
	}
	return k, fmt.Errorf("target: key file %s: unknown kdf %q", path, kf.KDF)
}
