package s3

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/secret"
)

// Config configures an S3 backend.
type Config struct {
	// Endpoint is host[:port] of the S3 API (e.g. s3.eu-central-1.amazonaws.com).
	Endpoint string
	// Bucket holds the repository; Prefix (optional) is a key prefix in it,
	// so one bucket can hold several repositories.
	Bucket string
	Prefix string
	// Region of the bucket ("" lets the client discover it).
	Region string
	// AccessKey and SecretKey are the credentials.
	AccessKey string
	SecretKey secret.Value
	// Insecure talks plain HTTP instead of HTTPS (test servers, a private
	// network).
	Insecure bool
	// CAFile adds a PEM CA bundle to trust for HTTPS.
	CAFile string
	// PathStyle addresses buckets as endpoint/bucket instead of
	// bucket.endpoint (most self-hosted servers need it).
	PathStyle bool
	// CreateBucket creates the bucket when it does not exist.
	CreateBucket bool
	// Timeout bounds one request's wait for response headers (0: 2 min).
	Timeout time.Duration
}

// S3 is a target.Backend on an S3 bucket.
type S3 struct {
	cfg    Config
	c      *minio.Client
	prefix string
}

// ErrNoBucket is wrapped by errors for a bucket that does not exist.
var ErrNoBucket = errors.New("bucket does not exist")

var _ target.Backend = (*S3)(nil)

// Open connects to the endpoint and checks the bucket (creating it with
// CreateBucket).
func Open(ctx context.Context, cfg Config) (*S3, error) {
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("s3: endpoint and bucket are required")
	}
	if cfg.AccessKey == "" || cfg.SecretKey.Empty() {
		return nil, errors.New("s3: access key and secret key are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 128
	tr.MaxIdleConnsPerHost = 64
	tr.ResponseHeaderTimeout = cfg.Timeout
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("s3: CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("s3: CA file %s holds no PEM certificate", cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey.Reveal(), ""),
		Secure:       !cfg.Insecure,
		Transport:    tr,
		Region:       cfg.Region,
		BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	s := &S3{cfg: cfg, c: c, prefix: strings.Trim(cfg.Prefix, "/")}
	if s.prefix != "" {
		if err := target.CheckKey(s.prefix); err != nil {
			return nil, fmt.Errorf("s3: prefix: %w", err)
		}
		s.prefix += "/"
	}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("s3: %s: %w", s.name(), err)
	}
	if !ok {
		if !cfg.CreateBucket {
			return nil, fmt.Errorf("s3: %s: %w", s.name(), ErrNoBucket)
		}
		if err := c.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region}); err != nil {
			return nil, fmt.Errorf("s3: %s: create bucket: %w", s.name(), err)
		}
	}
	return s, nil
}

func (s *S3) name() string {
	scheme := "https"
	if s.cfg.Insecure {
		scheme = "http"
	}
	return scheme + "://" + s.cfg.Endpoint + "/" + s.cfg.Bucket + "/" + s.prefix
}

func (s *S3) object(key string) (string, error) {
	if err := target.CheckKey(key); err != nil {
		return "", fmt.Errorf("s3: %w", err)
	}
	return s.prefix + key, nil
}

// classify wraps the S3 error codes callers act on.
func (s *S3) classify(key string, err error) error {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		switch er.Code {
		case "NoSuchKey":
			return fmt.Errorf("s3: %s: %w", key, target.ErrNotFound)
		case "NoSuchBucket":
			return fmt.Errorf("s3: %s: %w", s.name(), ErrNoBucket)
		}
	}
	return fmt.Errorf("s3: %s: %w", key, err)
}

// Put stores the object with one PUT.
func (s *S3) Put(ctx context.Context, key string, data []byte) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	_, err = s.c.PutObject(ctx, s.cfg.Bucket, obj, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
		ContentType:      "application/octet-stream",
		DisableMultipart: true,
		SendContentMd5:   true, // the server checks what it stores
	})
	if err != nil {
		return s.classify(key, err)
	}
	return nil
}

// Get reads a range of the object with a ranged GET.
func (s *S3) Get(ctx context.Context, key string, off, length int64) ([]byte, error) {
	obj, err := s.object(key)
	if err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("s3: get %s: negative offset %d", key, off)
	}
	if length == 0 {
		if _, err := s.Stat(ctx, key); err != nil {
			return nil, err
		}
		return []byte{}, nil
	}
	var opts minio.GetObjectOptions
	switch {
	case length > 0:
		err = opts.SetRange(off, off+length-1)
	case off > 0:
		err = opts.SetRange(off, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("s3: get %s: %w", key, err)
	}
	// One request whose response says how long the body is, so the
	// buffer is never larger than what the server sends.
	body, oi, _, err := minio.Core{Client: s.c}.GetObject(ctx, s.cfg.Bucket, obj, opts)
	if err != nil {
		var er minio.ErrorResponse
		if errors.As(err, &er) && (er.Code == "InvalidRange" || er.StatusCode == http.StatusRequestedRangeNotSatisfiable) {
			// Reading past the end returns what exists: nothing.
			if _, serr := s.Stat(ctx, key); serr != nil {
				return nil, serr
			}
			return []byte{}, nil
		}
		return nil, s.classify(key, err)
	}
	defer body.Close()
	b, err := readBody(body, oi.Size, length)
	if err != nil {
		return nil, s.classify(key, err)
	}
	return b, nil
}

// readBody reads a GET's body of size bytes (as the response says) into
// one buffer: the asked length, or less when the object is shorter (a
// restore's chunk reads are the hot path). length < 0 reads it all.
func readBody(r io.Reader, size, length int64) ([]byte, error) {
	if length < 0 || (size >= 0 && size < length) {
		length = max(size, 0)
	}
	b := make([]byte, length)
	n, err := io.ReadFull(r, b)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	return b[:n], err
}

// Stat describes the object with a HEAD.
func (s *S3) Stat(ctx context.Context, key string) (target.ObjectInfo, error) {
	obj, err := s.object(key)
	if err != nil {
		return target.ObjectInfo{}, err
	}
	oi, err := s.c.StatObject(ctx, s.cfg.Bucket, obj, minio.StatObjectOptions{})
	if err != nil {
		return target.ObjectInfo{}, s.classify(key, err)
	}
	return target.ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// List lists the objects under prefix.
func (s *S3) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	return s.list(ctx, prefix, "", fn)
}

// ListAfter lists the keys under prefix after prefix+after, which the
// server skips (StartAfter).
func (s *S3) ListAfter(ctx context.Context, prefix, after string, fn func(target.ObjectInfo) error) error {
	return s.list(ctx, prefix, s.prefix+prefix+after, fn)
}

func (s *S3) list(ctx context.Context, prefix, startAfter string, fn func(target.ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the lister's goroutine when fn stops early
	o := minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true, StartAfter: startAfter}
	for oi := range s.c.ListObjects(ctx, s.cfg.Bucket, o) {
		if oi.Err != nil {
			return fmt.Errorf("s3: list %q: %w", prefix, s.classify(prefix, oi.Err))
		}
		key := strings.TrimPrefix(oi.Key, s.prefix)
		if strings.HasSuffix(key, "/") { // a directory marker some tools leave
			continue
		}
		if err := fn(target.ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Delete removes the object (S3 does not mind a missing one).
func (s *S3) Delete(ctx context.Context, key string) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	if err := s.c.RemoveObject(ctx, s.cfg.Bucket, obj, minio.RemoveObjectOptions{}); err != nil {
		err = s.classify(key, err)
		if errors.Is(err, target.ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}

// Sync has nothing to do: S3 acknowledges a PUT once it is durable.
func (s *S3) Sync(ctx context.Context) error { return ctx.Err() }

// SyncObjects does nothing: an object S3 lists is durable.
func (s *S3) SyncObjects(ctx context.Context, _ []string) error { return ctx.Err() }

// Properties describes the backend.
func (s *S3) Properties() target.Properties {
	return target.Properties{Name: "s3:" + s.name()}
}

// Close releases idle connections.
func (s *S3) Close() error { return nil }
