package all

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/limit"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/target/retry"
	"github.com/virtkeep/virtkeep/target/s3"
	"github.com/virtkeep/virtkeep/target/sftp"
)

// Config describes one target, as the configuration file does.
type Config struct {
	Name        string
	Kind        string // local, sftp or s3
	Path        string // local: the repository directory
	SFTP        sftp.Config
	S3          s3.Config
	Compression target.Compression
	// PackSize is the pack size of a repository created here (see
	// target.InitOptions; 0 the default, negative an object per chunk).
	PackSize int
	// KeyFile turns on encryption: the repository key, created with the
	// repository when the file does not exist yet.
	KeyFile    string
	Passphrase []byte // for a passphrase-protected key file
	// Limit, if set, is the target's bandwidth and request budget, shared
	// by every repository opened with it.
	Limit *limit.Shared
	// Now is the repositories' clock (default time.Now).
	Now func() time.Time
	// CacheDir is where repositories keep copies of their metadata
	// (target.OpenOptions.CacheDir); "" none.
	CacheDir string
}

// Open opens the target's repository. With create set, an empty location
// gets a new repository (and a new key file, when one is configured and
// missing).
func Open(ctx context.Context, cfg Config, create bool, log *slog.Logger) (*target.Repository, error) {
	var b target.Backend
	switch cfg.Kind {
	case "local", "":
		if cfg.Path == "" {
			return nil, target.ConfigError(fmt.Errorf("target %s: kind local needs a path", cfg.Name))
		}
		lb, err := local.Open(local.Config{Path: cfg.Path})
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", cfg.Name, err)
		}
		b = lb
	case "sftp":
		sb, err := sftp.Open(ctx, cfg.SFTP)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", cfg.Name, err)
		}
		b = sb
	case "s3":
		c := cfg.S3
		c.CreateBucket = create
		sb, err := s3.Open(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", cfg.Name, err)
		}
		b = sb
	default:
		return nil, target.ConfigError(fmt.Errorf("target %s: kind %q is not supported (local, sftp, s3)", cfg.Name, cfg.Kind))
	}
	b = cfg.Limit.Wrap(b)
	if !b.Properties().Local {
		// A server restarting or a connection reset is retried where it
		// failed; local file systems fail for reasons that do not pass.
		b = retry.Wrap(b, retry.Config{Log: log})
	}
	r, err := open(ctx, b, cfg, create, log)
	if err != nil {
		b.Close()
		return nil, err
	}
	return r, nil
}

func open(ctx context.Context, b target.Backend, cfg Config, create bool, log *slog.Logger) (*target.Repository, error) {
	var key *target.Key
	if cfg.KeyFile != "" {
		k, err := target.ReadKeyFile(cfg.KeyFile, cfg.Passphrase)
		if err != nil {
			if !create || !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("target %s: %w", cfg.Name, err)
			}
			if k, err = target.NewKey(); err != nil {
				return nil, err
			}
			if err := target.WriteKeyFile(cfg.KeyFile, k, cfg.Passphrase, target.DefaultKDF); err != nil {
				return nil, fmt.Errorf("target %s: %w", cfg.Name, err)
			}
			if log != nil {
				log.Warn("created a new repository key: keep a copy of it away from this host, backups cannot be read without it", "target", cfg.Name, "key_file", cfg.KeyFile)
			}
		}
		key = &k
	}
	oo := target.OpenOptions{Key: key, Compression: cfg.Compression, Logger: log, Now: cfg.Now, CacheDir: cfg.CacheDir}
	r, err := target.Open(ctx, b, oo)
	if errors.Is(err, target.ErrNotRepository) && create {
		if err := target.Init(ctx, b, target.InitOptions{Compression: cfg.Compression, Key: key, PackSize: cfg.PackSize}); err != nil {
			return nil, fmt.Errorf("target %s: %w", cfg.Name, err)
		}
		if log != nil {
			log.Info("initialised a new repository", "target", cfg.Name, "location", b.Properties().Name)
		}
		r, err = target.Open(ctx, b, oo)
	}
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", cfg.Name, err)
	}
	return r, nil
}
