package local

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestSyncCoversEachWriter: two writers share one backend (the daemon runs
// several jobs). A Sync that finds its directories taken by another Sync
// still running returns only once they are durable, and a failed fsync is
// returned, to that Sync and every later one.
func TestSyncCoversEachWriter(t *testing.T) {
	l, err := Open(Config{Path: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var mu sync.Mutex
	synced := map[string]bool{}
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	syncDir = func(dir string) error {
		once.Do(func() { close(entered); <-release }) // the first Sync stalls in its first fsync
		mu.Lock()
		synced[dir] = true
		mu.Unlock()
		return fsyncDir(dir)
	}
	defer func() { syncDir = fsyncDir }()
	if err := l.Put(ctx, "chunks/aa/one", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := l.Put(ctx, "chunks/bb/two", []byte("b")); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { first <- l.Sync(ctx) }() // writer A: takes both directories
	<-entered
	second := make(chan error, 1)
	go func() { second <- l.Sync(ctx) }() // writer B: its directory is A's now
	select {
	case err := <-second:
		t.Fatalf("the second Sync returned (%v) while the first was still making its puts durable", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"chunks/aa", "chunks/bb"} {
		if !synced[filepath.Join(l.cfg.Path, d)] {
			t.Fatalf("%s never fsynced", d)
		}
	}

	boom := errors.New("EIO")
	syncDir = func(string) error { return boom }
	if err := l.Put(ctx, "chunks/cc/three", []byte("c")); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); !errors.Is(err, boom) {
		t.Fatalf("sync with a failing fsync: %v", err)
	}
	syncDir = fsyncDir
	if err := l.Sync(ctx); !errors.Is(err, boom) {
		t.Fatalf("the Sync after a failed fsync: %v, want the failure again", err)
	}
}

// TestDirectoriesMadeDurable: a put that makes several directories marks
// every new entry for Sync, not only the last; and SyncObjects makes
// durable objects another process put and never synced (it was killed
// before its Sync), with the directories above them.
func TestDirectoriesMadeDurable(t *testing.T) {
	root := t.TempDir()
	var mu sync.Mutex
	synced := map[string]bool{}
	syncDir = func(dir string) error {
		mu.Lock()
		synced[dir] = true
		mu.Unlock()
		return fsyncDir(dir)
	}
	defer func() { syncDir = fsyncDir }()
	ctx := context.Background()
	l, err := Open(Config{Path: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Put(ctx, "packs/ab/one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", "packs", "packs/ab"} {
		if !synced[filepath.Join(root, d)] {
			t.Errorf("after a put that made packs/ab: %q was not fsynced (%v)", d, synced)
		}
	}
	killed, err := Open(Config{Path: root}) // another process: puts, then dies before Sync
	if err != nil {
		t.Fatal(err)
	}
	if err := killed.Put(ctx, "packs/cd/two", []byte("2")); err != nil {
		t.Fatal(err)
	}
	clear(synced)
	if err := l.SyncObjects(ctx, []string{"packs/cd/two", "packs/ef/missing"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", "packs", "packs/cd"} {
		if !synced[filepath.Join(root, d)] {
			t.Errorf("SyncObjects of another process's object: %q was not fsynced (%v)", d, synced)
		}
	}
}
