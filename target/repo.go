package target

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"time"
)

const (
	// FormatVersion is the newest repository format this code writes and
	// reads: 2 keeps chunks in packs (pack_size set); 1 stores a chunk per
	// object and is still read and written.
	FormatVersion = 2
	// manifestVersion is the version of the manifests written (unchanged
	// by format 2).
	manifestVersion = 1
	// DefaultChunkSize is the chunk size of new repositories (docs/FORMAT.md).
	DefaultChunkSize = 256 << 10
	pageEntries      = 1024
)

// Compression of new objects.
type Compression string

// Compression settings.
const (
	CompressionZstd Compression = "zstd"
	CompressionNone Compression = "none"
)

type repoConfig struct {
	Version     int         `json:"version"`
	ID          string      `json:"id"`
	ChunkSize   int         `json:"chunk_size"`
	PageEntries int         `json:"page_entries"`
	Compression Compression `json:"compression"`
	// PackSize, in format 2, is the size a pack is stored at; 0: no packs.
	PackSize   int `json:"pack_size,omitempty"`
	Encryption *struct {
		Cipher   string `json:"cipher"`
		KeyCheck string `json:"key_check"`
	} `json:"encryption"`
}

// InitOptions configure a new repository.
type InitOptions struct {
	Compression Compression // default zstd
	Key         *Key        // nil: not encrypted
	ChunkSize   int         // default DefaultChunkSize; a power of two from 64 KiB to 4 MiB
	// PackSize is how many bytes of chunks go into one pack object:
	// default DefaultPackSize, from 1 MiB to 256 MiB; negative stores one
	// object per chunk (format 1, readable by older virtkeeps).
	PackSize int
}

// ErrNotRepository means the backend holds no repository config.
var ErrNotRepository = errors.New("no virtkeep repository here")

// ErrExists means Init found a repository already.
var ErrExists = errors.New("a repository exists here already")

// Init creates a repository in an empty backend.
func Init(ctx context.Context, b Backend, o InitOptions) error {
	if _, err := b.Stat(ctx, "config"); err == nil {
		return fmt.Errorf("init %s: %w", b.Properties().Name, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("init %s: %w", b.Properties().Name, err)
	}
	if o.Compression == "" {
		o.Compression = CompressionZstd
	}
	if o.Compression != CompressionZstd && o.Compression != CompressionNone {
		return fmt.Errorf("init: compression %q: want zstd or none", o.Compression)
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.ChunkSize < 64<<10 || o.ChunkSize > 4<<20 || o.ChunkSize&(o.ChunkSize-1) != 0 {
		return fmt.Errorf("init: chunk size %d: want a power of two from 64 KiB to 4 MiB", o.ChunkSize)
	}
	var rid [16]byte
	if _, err := rand.Read(rid[:]); err != nil {
		return err
	}
	cfg := repoConfig{Version: 1, ID: hex.EncodeToString(rid[:]), ChunkSize: o.ChunkSize, PageEntries: pageEntries, Compression: o.Compression}
	switch {
	case o.PackSize == 0:
		cfg.Version, cfg.PackSize = FormatVersion, DefaultPackSize
	case o.PackSize > 0:
		if o.PackSize < minPackSize || o.PackSize > maxPackSize {
			return fmt.Errorf("init: pack size %d: want 1 MiB to 256 MiB", o.PackSize)
		}
		cfg.Version, cfg.PackSize = FormatVersion, o.PackSize
	}
	if o.Key != nil {
		sk, err := o.Key.derive(cfg.ID)
		if err != nil {
			return err
		}
		cfg.Encryption = &struct {
			Cipher   string `json:"cipher"`
			KeyCheck string `json:"key_check"`
		}{"aes-256-gcm", sk.keyCheck()}
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := b.Put(ctx, "config", append(data, '\n')); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	return b.Sync(ctx)
}

// OpenOptions configure an open repository.
type OpenOptions struct {
	Key *Key // required for encrypted repositories
	// Compression overrides the repository's setting for new objects
	// ("" keeps it).
	Compression Compression
	// Workers is how many chunks are hashed, compressed and stored at once
	// (default twice GOMAXPROCS, at least 4: storing overlaps hashing).
	Workers int
	Logger  *slog.Logger
	// Now is the clock (tests inject one).
	Now func() time.Time
	// Host names this host in manifests and locks.
	Host string
	// MachineID, when set, stands for /etc/machine-id (tests of several
	// machines in one process).
	MachineID string
	// LockStale is how long an unrefreshed lock stays valid (default
	// DefaultLockStale). Every host using the repository must agree.
	LockStale time.Duration
	// CacheDir, when set, is a private directory where the repository
	// keeps copies of its manifests and pack indexes (in a directory
	// named by its ID), so that listing the points or opening the
	// index reads only what changed since (see cache.go).
	CacheDir string
}

// Repository is an open repository. It is safe for concurrent use.
type Repository struct {
	b      Backend
	cfg    repoConfig
	codec  *codec
	log    *slog.Logger
	now    func() time.Time
	worker int

	packs    *packIndex
	packSem  chan struct{} // bounds the packs being stored at once
	cache    *metaCache
	unmerged unmerged // own indexes read or written, for a merged one

	owner     Owner
	lockStale time.Duration
}

// Host is the name this host writes into manifests and locks.
func (r *Repository) Host() string { return r.owner.Host }

// Identity is who this host is in the points it writes.
func (r *Repository) Identity() Identity {
	return Identity{Host: r.owner.Host, MachineID: r.owner.MachineID}
}

// Now is the time new points and locks are dated by (Config.Now).
func (r *Repository) Now() time.Time { return r.now() }

// Open opens the repository in b.
func Open(ctx context.Context, b Backend, o OpenOptions) (*Repository, error) {
	name := b.Properties().Name
	raw, err := b.Get(ctx, "config", 0, 1<<20)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("open %s: %w", name, ErrNotRepository)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	cfg, err := parseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	var sk *subkeys
	switch {
	case cfg.Encryption != nil && o.Key == nil:
		return nil, fmt.Errorf("open %s: the repository is encrypted: a key is needed", name)
	case cfg.Encryption == nil && o.Key != nil:
		return nil, fmt.Errorf("open %s: a key was given but the repository is not encrypted", name)
	case cfg.Encryption != nil:
		if sk, err = o.Key.derive(cfg.ID); err != nil {
			return nil, err
		}
		if sk.keyCheck() != cfg.Encryption.KeyCheck {
			return nil, fmt.Errorf("open %s: %w", name, ErrWrongKey)
		}
	}
	comp := cfg.Compression
	if o.Compression != "" {
		comp = o.Compression
	}
	c, err := newCodec(comp == CompressionZstd, cfg.ChunkSize, sk)
	if err != nil {
		return nil, err
	}
	r := &Repository{b: b, cfg: cfg, codec: c, log: o.Logger, now: o.Now, worker: o.Workers}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.worker <= 0 {
		r.worker = max(4, 2*runtime.GOMAXPROCS(0))
	}
	r.packs, r.packSem = newPackIndex(), make(chan struct{}, packUploads(b.Properties()))
	r.cache = newMetaCache(o.CacheDir, cfg.ID, r.log)
	r.owner, r.lockStale = localOwner(o.Host), o.LockStale
	if o.MachineID != "" {
		r.owner.MachineID = o.MachineID
	}
	if r.lockStale <= 0 {
		r.lockStale = DefaultLockStale
	}
	return r, nil
}

func parseConfig(raw []byte) (repoConfig, error) {
	var cfg repoConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return cfg, fmt.Errorf("%w: config: %v", ErrCorrupt, err)
	}
	if cfg.Version > FormatVersion {
		return cfg, fmt.Errorf("config: format version %d is newer than this virtkeep (%d): upgrade virtkeep", cfg.Version, FormatVersion)
	}
	if cfg.Version < 1 || cfg.ChunkSize < 64<<10 || cfg.ChunkSize > 4<<20 || cfg.ChunkSize&(cfg.ChunkSize-1) != 0 ||
		cfg.PageEntries != pageEntries || len(cfg.ID) != 32 || !isHex(cfg.ID) ||
		(cfg.Version == 1) != (cfg.PackSize == 0) || (cfg.PackSize != 0 && (cfg.PackSize < minPackSize || cfg.PackSize > maxPackSize)) ||
		(cfg.Compression != CompressionZstd && cfg.Compression != CompressionNone) ||
		(cfg.Encryption != nil && cfg.Encryption.Cipher != "aes-256-gcm") {
		return cfg, fmt.Errorf("%w: config: unsupported or malformed parameters", ErrCorrupt)
	}
	return cfg, nil
}

// isHex reports whether s is lower-case hex digits (a repository ID, which
// names its directory in the metadata cache).
func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// Backend returns the repository's backend.
func (r *Repository) Backend() Backend { return r.b }

// Close closes the backend (its connections, for remote ones).
func (r *Repository) Close() error { return r.b.Close() }

// ChunkSize is the repository's chunk size.
func (r *Repository) ChunkSize() int { return r.cfg.ChunkSize }

// Encrypted reports whether the repository is encrypted.
func (r *Repository) Encrypted() bool { return r.cfg.Encryption != nil }

func objectKey(typ byte, id ID) string {
	h := id.String()
	switch typ {
	case typeChunk:
		return "chunks/" + h[:2] + "/" + h
	case typeBlob:
		return "blobs/" + h[:2] + "/" + h
	default:
		return "index/" + h[:2] + "/" + h
	}
}

// putObject seals plain and stores it content-addressed unless it is there.
// It returns the ID and the bytes written (0 when it existed).
func (r *Repository) putObject(ctx context.Context, typ byte, plain []byte) (ID, int64, error) {
	id := r.codec.id(plain)
	n, err := r.putWithID(ctx, typ, id, plain)
	return id, n, err
}

// putWithID is putObject for a plaintext whose ID is known.
//
// An object already stored under the key is reused only when it has the
// length that sealing plain gives (compression and sealing are
// deterministic in length): a torn object (a power loss on a backend that
// renamed before the data was durable, a truncation) is written anew
// instead of being referenced by every later point with the same data.
// Objects written by a virtkeep whose compressor differs are rewritten
// once, which costs an upload and loses nothing.
func (r *Repository) putWithID(ctx context.Context, typ byte, id ID, plain []byte) (int64, error) {
	return r.putSealed(ctx, objectKey(typ, id), r.codec.seal(typ, plain))
}

// putSealed stores the envelope obj under key unless an object of its
// length is there; it returns the bytes written.
func (r *Repository) putSealed(ctx context.Context, key string, obj []byte) (int64, error) {
	fi, err := r.b.Stat(ctx, key)
	switch {
	case err == nil && fi.Size == int64(len(obj)):
		return 0, nil
	case err == nil:
		r.log.Warn("stored object has the wrong length: writing it anew", "object", key, "size", fi.Size, "want", len(obj))
	case !errors.Is(err, ErrNotFound):
		return 0, fmt.Errorf("stat %s: %w", key, err)
	}
	if err := r.b.Put(ctx, key, obj); err != nil {
		return 0, fmt.Errorf("store %s: %w", key, err)
	}
	return int64(len(obj)), nil
}

// getEnvelope loads the whole object at key, which must be of type typ: it
// reads at most what such an object can hold, so a huge object planted on
// the target costs no more memory than a legitimate one.
func (r *Repository) getEnvelope(ctx context.Context, typ byte, key string) ([]byte, error) {
	limit := maxObject(typ, r.cfg.ChunkSize)
	obj, err := r.b.Get(ctx, key, 0, limit+1)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", key, err)
	}
	if int64(len(obj)) > limit {
		return nil, fmt.Errorf("%s: %w", key, corrupt("object is larger than the %d bytes its type allows", limit))
	}
	return obj, nil
}

// openAt loads and opens the object at key, of type typ.
func (r *Repository) openAt(ctx context.Context, typ byte, key string) ([]byte, error) {
	obj, err := r.getEnvelope(ctx, typ, key)
	if err != nil {
		return nil, err
	}
	plain, err := r.codec.open(typ, obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return plain, nil
}

// getObject loads, opens and verifies a content-addressed object.
func (r *Repository) getObject(ctx context.Context, typ byte, id ID) ([]byte, error) {
	var obj []byte
	var err error
	if typ == typeChunk || typ == typePage {
		obj, err = r.packedEnvelope(ctx, ref{typ, id})
	} else {
		obj, err = r.getEnvelope(ctx, typ, objectKey(typ, id))
	}
	if err != nil {
		return nil, err
	}
	return r.openChecked(typ, id, obj)
}

// openChecked opens the envelope obj of object id and checks that its
// content hashes to id.
func (r *Repository) openChecked(typ byte, id ID, obj []byte) ([]byte, error) {
	key := objectKey(typ, id)
	plain, err := r.codec.open(typ, obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if got := r.codec.id(plain); got != id {
		return nil, fmt.Errorf("%s: %w", key, corrupt("content hashes to %s", got))
	}
	return plain, nil
}
