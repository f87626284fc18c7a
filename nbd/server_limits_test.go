package nbd_test

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/nbd"
)

// slowMapper counts the block status walks running at once.
type slowMapper struct {
	size      int64
	now, most atomic.Int32
}

func (m *slowMapper) Size() int64 { return m.size }

func (m *slowMapper) ReadAt(_ context.Context, p []byte, _ int64) error { clear(p); return nil }

func (m *slowMapper) Extents(_ context.Context, off, length int64, fn func(nbd.Extent) error) error {
	n := m.now.Add(1)
	defer m.now.Add(-1)
	for {
		most := m.most.Load()
		if n <= most || m.most.CompareAndSwap(most, n) {
			break
		}
	}
	time.Sleep(50 * time.Millisecond)
	return fn(nbd.Extent{Off: off, Len: length})
}

// TestServerLimits: the server caps its connections, the block status
// work of one client, and the time a client may take to negotiate.
func TestServerLimits(t *testing.T) {
	src := &slowMapper{size: 64 << 20}
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "d", Source: src}}, MaxConns: 2, MaxStatus: 3, HandshakeTimeout: 300 * time.Millisecond}
	sock := startServer(t, srv)
	ctx := context.Background()

	// A client that connects and says nothing is dropped after the timeout.
	idle, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	start := time.Now()
	_ = idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(idle); err != nil {
		t.Fatalf("idle client: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("an idle client held its connection for %v", d)
	}

	// Two connections are served, a third is closed at once.
	c1, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "d", MetaContexts: []string{nbd.ContextBaseAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "d"})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c3, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "d"}); err == nil {
		c3.Close()
		t.Fatal("a third connection was served with MaxConns 2")
	}

	// Sixteen block status requests at once: at most three are worked on.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := c1.BlockStatus(ctx, int64(i)<<20, 1<<20)
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if most := src.most.Load(); most > 3 || most < 2 {
		t.Fatalf("%d block status walks at once, want at most 3 (and some overlap)", most)
	}
}
