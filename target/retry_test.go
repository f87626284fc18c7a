package target_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/target/retry"
	"github.com/virtkeep/virtkeep/target/s3"
	"github.com/virtkeep/virtkeep/target/secret"
	"github.com/virtkeep/virtkeep/target/targettest"
	"github.com/virtkeep/virtkeep/testenv"
)

func TestConformanceRetry(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend { return retry.Wrap(mem.New(), retry.Config{}) })
}

// flaky fails the first failures calls of every key's Put, Get, Stat and
// Delete, and lists half way then fails, failures times.
type flaky struct {
	target.Backend
	failures int
	mu       sync.Mutex
	calls    map[string]int
}

var errFlaky = errors.New("connection reset by peer")

func (f *flaky) fail(op, key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op+" "+key]++
	return f.calls[op+" "+key] <= f.failures
}

func (f *flaky) Put(ctx context.Context, key string, data []byte) error {
	if f.fail("put", key) {
		return errFlaky
	}
	return f.Backend.Put(ctx, key, data)
}

func (f *flaky) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if f.fail("get", key) {
		return nil, errFlaky
	}
	return f.Backend.Get(ctx, key, off, n)
}

func (f *flaky) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	fails := f.fail("list", prefix)
	n := 0
	return f.Backend.List(ctx, prefix, func(fi target.ObjectInfo) error {
		if n++; fails && n > 2 {
			return errFlaky
		}
		return fn(fi)
	})
}

// TestRetry: transient failures are retried where they happen, a listing
// that broke off goes on without repeating what it delivered, and what no
// retry mends (a missing object, the caller's own error, cancellation)
// returns at once.
func TestRetry(t *testing.T) {
	ctx := context.Background()
	f := &flaky{Backend: mem.New(), failures: 2, calls: map[string]int{}}
	b := retry.Wrap(f, retry.Config{Initial: time.Millisecond})
	for i := range 5 {
		if err := b.Put(ctx, fmt.Sprintf("k/%d", i), []byte{byte(i)}); err != nil {
			t.Fatalf("put after 2 failures: %v", err)
		}
	}
	if got, err := b.Get(ctx, "k/3", 0, -1); err != nil || len(got) != 1 || got[0] != 3 {
		t.Fatalf("get after 2 failures: %v %v", got, err)
	}
	var listed []string
	if err := b.List(ctx, "k/", func(fi target.ObjectInfo) error { listed = append(listed, fi.Key); return nil }); err != nil || len(listed) != 5 {
		t.Fatalf("list after it broke off twice: %v %v", listed, err)
	}
	if _, err := b.Get(ctx, "k/none", 0, -1); !errors.Is(err, target.ErrNotFound) || f.calls["get k/none"] != 3 {
		// the flaky fails twice, then the inner says not found: once more
		// would be a retry of "not found"
		t.Fatalf("missing object: %v after %d calls", err, f.calls["get k/none"])
	}
	mine := errors.New("stop here")
	f.failures = 0
	calls := 0
	if err := b.List(ctx, "k/", func(target.ObjectInfo) error { calls++; return mine }); err != mine || calls != 1 {
		t.Fatalf("the callback's error: %v after %d calls", err, calls)
	}
	f.failures = 1000
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := b.Put(cctx, "k/late", nil); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("put that never succeeds, cancelled: %v after %v", err, time.Since(start))
	}
}

// TestBackupThroughServerRestart: the S3 server down for 8 s, and sshd
// killed and restarted, in the middle of a backup: the requests that
// failed are retried where they failed, the backup commits, and the point
// restores byte-exact.
func TestBackupThroughServerRestart(t *testing.T) {
	for _, kind := range []string{"s3", "sftp"} {
		t.Run(kind, func(t *testing.T) {
			(&testenv.FaultRow{Fault: map[string]string{"s3": "S3 server killed for 8 s mid-backup", "sftp": "sshd killed and restarted mid-backup"}[kind], Iterations: 1,
				Checked: "failed requests retried where they failed, the backup commits, the point restores byte-exact, check --read-data clean"}).Record(t)
			var b target.Backend
			var kill, start func()
			down := 8 * time.Second
			if kind == "s3" {
				srv := testenv.S3(t)
				b, kill, start = s3Backend(t, srv, "restart"), srv.Kill, srv.Start
			} else {
				srv := testenv.SSHD(t)
				b, kill, start, down = sftpBackend(t, srv, 2), srv.Kill, srv.Start, 3*time.Second
			}
			defer b.Close()
			r := newRepo(t, retry.Wrap(b, retry.Config{Initial: 200 * time.Millisecond}), nil)
			ctx := context.Background()
			c, _ := testenv.NewContent(24<<20, 41, testenv.Fill{Random: 1})
			pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm1", Level: target.LevelFull})
			if err != nil {
				t.Fatal(err)
			}
			dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: c.Size()})
			if err != nil {
				t.Fatal(err)
			}
			var written atomic.Int64
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, dw.ChunkSize())
				for idx := range dw.Chunks() {
					_, _ = c.ReadAt(buf, idx*int64(len(buf)))
					if err := dw.WriteChunk(ctx, idx, buf); err != nil {
						done <- err
						return
					}
					written.Add(1)
				}
				done <- dw.Close(ctx)
			}()
			for written.Load() < 20 {
				time.Sleep(5 * time.Millisecond)
			}
			kill()
			time.Sleep(down)
			start()
			if err := <-done; err != nil {
				t.Fatalf("writing through the restart: %v", err)
			}
			m, err := pw.Commit(ctx)
			if err != nil {
				t.Fatalf("commit after the restart: %v", err)
			}
			restoreEquals(t, r, m.ID, c)
			rep, err := r.Check(ctx, target.CheckOptions{ReadData: true})
			if err != nil || !rep.OK() {
				t.Fatalf("check: %v %v", rep, err)
			}
		})
	}
}

// TestCopyThroughSSHDRestart: sshd killed and restarted a third of the way
// through a copy into an SFTP target: the copy goes on, commits, and the
// copy restores byte-exact.
func TestCopyThroughSSHDRestart(t *testing.T) {
	(&testenv.FaultRow{Fault: "sshd killed and restarted in the middle of a copy into an SFTP target", Iterations: 1,
		Checked: "the copy commits in one attempt, restores byte-exact, check --read-data clean"}).Record(t)
	srv := testenv.SSHD(t)
	b := sftpBackend(t, srv, 2)
	defer b.Close()
	ctx := context.Background()
	src := newRepo(t, mem.New(), nil)
	dst := newRepo(t, retry.Wrap(b, retry.Config{Initial: 200 * time.Millisecond}), nil)
	c, _ := testenv.NewContent(24<<20, 91, testenv.Fill{Random: 1})
	full, _ := backup(t, src, c, target.LevelFull, "", nil)
	var third atomic.Bool
	done := make(chan error, 1)
	go func() {
		_, _, err := target.Copy(ctx, src, dst, full.ID, target.CopyOptions{Progress: func(_ string, d, total int64) {
			if d*3 > total {
				third.Store(true)
			}
		}})
		done <- err
	}()
	for !third.Load() {
		time.Sleep(5 * time.Millisecond)
	}
	srv.Kill()
	time.Sleep(3 * time.Second)
	srv.Start()
	if err := <-done; err != nil {
		t.Fatalf("copy through sshd's restart: %v", err)
	}
	restoreEquals(t, dst, full.ID, c)
	if rep, err := dst.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("check: %v %v", rep, err)
	}
}

// TestBackupThroughSlowErroringServer: an S3 server 10 ms away whose
// connections are all cut every 300 ms (a flaky network, a server that
// fails requests) while a backup writes to it: the requests that fail are
// retried where they failed, the backup commits and restores byte-exact.
func TestBackupThroughSlowErroringServer(t *testing.T) {
	(&testenv.FaultRow{Fault: "S3 server behind a proxy adding 10 ms each way and cutting every connection every 300 ms during a backup", Iterations: 1,
		Checked: "the backup commits, restores byte-exact, check --read-data clean"}).Record(t)
	srv := testenv.S3(t)
	proxy := testenv.NewDelayProxy(t, srv.Endpoint, 10*time.Millisecond)
	ctx := context.Background()
	b, err := s3.Open(ctx, s3.Config{Endpoint: proxy.Addr, Bucket: "erroring", Prefix: "repo", Region: srv.Region, AccessKey: srv.AccessKey,
		SecretKey: secret.Value(srv.SecretKey), Insecure: true, PathStyle: true, CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := newRepo(t, retry.Wrap(b, retry.Config{Initial: 100 * time.Millisecond}), nil)
	c, _ := testenv.NewContent(24<<20, 92, testenv.Fill{Random: 1})
	stop := make(chan struct{})
	cuts := make(chan int, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				cuts <- n
				return
			case <-time.After(300 * time.Millisecond):
				n += proxy.Cut()
			}
		}
	}()
	m, err := tryWrite(r, c)
	close(stop)
	n := <-cuts
	if err != nil {
		t.Fatalf("backup through an erroring server (%d connections cut): %v", n, err)
	}
	testenv.Report(t, "backup through a server 10 ms away whose connections were cut every 300 ms: %d connections cut", n)
	if n == 0 {
		t.Fatal("no connection was cut: the test did not overlap the backup")
	}
	restoreEquals(t, r, m.ID, c)
	if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("check: %v %v", rep, err)
	}
}
