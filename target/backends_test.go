package target_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/faulty"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/target/s3"
	"github.com/virtkeep/virtkeep/target/secret"
	"github.com/virtkeep/virtkeep/target/sftp"
	"github.com/virtkeep/virtkeep/target/targettest"
	"github.com/virtkeep/virtkeep/testenv"
)

func TestConformanceMem(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend { return mem.New() })
}

func TestConformanceLocal(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend {
		b, err := local.Open(local.Config{Path: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestConformanceLocalFsyncEach(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend {
		b, err := local.Open(local.Config{Path: t.TempDir(), FsyncEach: true})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestConformanceFaultyPassThrough(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend { return faulty.Wrap(mem.New()) })
}

// sftpBackend opens a backend on a fresh directory of srv.
func sftpBackend(t testing.TB, srv *testenv.SSHServer, conns int) *sftp.SFTP {
	t.Helper()
	b, err := sftp.Open(context.Background(), sftp.Config{
		Host: srv.Host, Port: srv.Port, User: srv.User, Path: filepath.Join(srv.Dir, fmt.Sprintf("repo-%d", time.Now().UnixNano())),
		IdentityFile: srv.IdentityFile, KnownHostsFile: srv.KnownHostsFile, Connections: conns, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformanceSFTP(t *testing.T) {
	srv := testenv.SSHD(t)
	targettest.Run(t, func(t *testing.T) target.Backend { return sftpBackend(t, srv, 2) })
}

// TestSFTPRefusesUnknownHostKey: a server whose key is not the one in
// known_hosts (a man in the middle, a reinstalled host) is never talked to.
func TestSFTPRefusesUnknownHostKey(t *testing.T) {
	srv := testenv.SSHD(t)
	other := testenv.SSHD(t) // a second server: its known_hosts names another key for another port
	kh, err := os.ReadFile(other.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	// Claim the other server's key for srv's address.
	bad := filepath.Join(t.TempDir(), "known_hosts")
	line := strings.Replace(string(kh), fmt.Sprintf(":%d]", other.Port), fmt.Sprintf(":%d]", srv.Port), 1)
	if err := os.WriteFile(bad, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = sftp.Open(context.Background(), sftp.Config{Host: srv.Host, Port: srv.Port, User: srv.User, Path: srv.Dir,
		IdentityFile: srv.IdentityFile, KnownHostsFile: bad, Timeout: 5 * time.Second})
	if !errors.Is(err, sftp.ErrHostKey) {
		t.Fatalf("open with a wrong host key: %v, want ErrHostKey", err)
	}
	// An empty known_hosts: unknown host, also refused.
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = sftp.Open(context.Background(), sftp.Config{Host: srv.Host, Port: srv.Port, User: srv.User, Path: srv.Dir,
		IdentityFile: srv.IdentityFile, KnownHostsFile: empty, Timeout: 5 * time.Second})
	if !errors.Is(err, sftp.ErrHostKey) {
		t.Fatalf("open with an empty known_hosts: %v, want ErrHostKey", err)
	}
}

// TestSFTPRefusesOpenIdentity: an SSH identity others could read is not
// used.
func TestSFTPRefusesOpenIdentity(t *testing.T) {
	srv := testenv.SSHD(t)
	id := filepath.Join(t.TempDir(), "id")
	b, err := os.ReadFile(srv.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(id, b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(id, 0o644)
	_, err = sftp.Open(context.Background(), sftp.Config{Host: srv.Host, Port: srv.Port, User: srv.User, Path: srv.Dir,
		IdentityFile: id, KnownHostsFile: srv.KnownHostsFile, Timeout: 5 * time.Second})
	if !errors.Is(err, secret.ErrNotPrivate) || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("open with an identity of mode 0644: %v", err)
	}
}

// TestSFTPReconnects: when the server goes away and comes back, the next
// requests dial again; while it is away they fail with an error, not hang.
func TestSFTPReconnects(t *testing.T) {
	srv := testenv.SSHD(t)
	b := sftpBackend(t, srv, 2)
	defer b.Close()
	ctx := context.Background()
	if err := b.Put(ctx, "a/one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	start := time.Now()
	if err := b.Put(ctx, "a/two", []byte("2")); err == nil {
		t.Fatal("put succeeded with the server down")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("put with the server down took %v", d)
	}
	srv.Start()
	for i := 0; i < 4; i++ { // both connections
		if err := b.Put(ctx, fmt.Sprintf("a/k%d", i), []byte("x")); err != nil {
			t.Fatalf("put after the server came back: %v", err)
		}
	}
	got, err := b.Get(ctx, "a/one", 0, -1)
	if err != nil || string(got) != "1" {
		t.Fatalf("get after reconnect: %q, %v", got, err)
	}
}

func s3Backend(t testing.TB, srv *testenv.S3Server, bucket string) *s3.S3 {
	t.Helper()
	b, err := s3.Open(context.Background(), s3.Config{Endpoint: srv.Endpoint, Bucket: bucket, Prefix: "repo",
		Region: srv.Region, AccessKey: srv.AccessKey, SecretKey: secret.Value(srv.SecretKey), Insecure: true, PathStyle: true, CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformanceS3(t *testing.T) {
	srv := testenv.S3(t)
	n := 0
	targettest.Run(t, func(t *testing.T) target.Backend {
		n++
		return s3Backend(t, srv, fmt.Sprintf("conformance-%d", n))
	})
}

// TestS3MissingBucket: a wrong bucket name is an error naming the bucket,
// never an empty repository; bad credentials are refused.
func TestS3MissingBucket(t *testing.T) {
	srv := testenv.S3(t)
	ctx := context.Background()
	_, err := s3.Open(ctx, s3.Config{Endpoint: srv.Endpoint, Bucket: "nosuchbucket", Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: secret.Value(srv.SecretKey), Insecure: true, PathStyle: true})
	if !errors.Is(err, s3.ErrNoBucket) || !strings.Contains(err.Error(), "nosuchbucket") {
		t.Fatalf("open of a missing bucket: %v", err)
	}
	s3Backend(t, srv, "exists")
	_, err = s3.Open(ctx, s3.Config{Endpoint: srv.Endpoint, Bucket: "exists", Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: "wrong-secret", Insecure: true, PathStyle: true})
	if err == nil {
		t.Fatal("open with a wrong secret key succeeded")
	}
}

// testSweep: GC removes temporary files of puts a killed writer left,
// once older than the grace period, and nothing else; dir is where the
// backend keeps its files on this host.
func testSweep(t *testing.T, b target.Backend, dir string) {
	t.Helper()
	ctx := context.Background()
	if err := target.Init(ctx, b, target.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := target.Open(ctx, b, target.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "chunks/ab/keep", []byte("x")); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "chunks", "ab", ".tmp-0123456789abcdef")
	young := filepath.Join(dir, "chunks", "ab", ".tmp-fedcba9876543210")
	for _, p := range []string{old, young} {
		if err := os.WriteFile(p, []byte("torn"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-48 * time.Hour)
	os.Chtimes(old, past, past)
	st, err := r.GC(ctx, target.GCOptions{Grace: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if st.TempRemoved != 1 {
		t.Fatalf("removed %d temporary files, want 1", st.TempRemoved)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatal("old temporary file kept")
	}
	if _, err := os.Stat(young); err != nil {
		t.Fatal("young temporary file removed (a put may still be writing it)")
	}
	if _, err := b.Stat(ctx, "config"); err != nil {
		t.Fatalf("config: %v", err)
	}
}

func TestSweepTempLocal(t *testing.T) {
	dir := t.TempDir()
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	testSweep(t, b, dir)
}

func TestSweepTempSFTP(t *testing.T) {
	srv := testenv.SSHD(t)
	b := sftpBackend(t, srv, 1)
	defer b.Close()
	testSweep(t, b, sftpDir(b, srv))
}

// sftpDir is where b keeps its files on this host.
func sftpDir(b *sftp.SFTP, srv *testenv.SSHServer) string {
	return strings.TrimPrefix(b.Properties().Name, fmt.Sprintf("sftp:%s@%s:%d:", srv.User, srv.Host, srv.Port))
}
