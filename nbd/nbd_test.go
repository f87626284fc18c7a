package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/testenv"
)

// contentSource serves a testenv.Content, and maps its holes and zeroes.
type contentSource struct{ c *testenv.Content }

func (s contentSource) Size() int64 { return s.c.Size() }

func (s contentSource) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := s.c.ReadAt(p, off)
	return err
}

func (s contentSource) Extents(_ context.Context, off, length int64, fn func(nbd.Extent) error) error {
	end := off + length
	for _, seg := range s.c.Segments() {
		lo, hi := max(seg.Off, off), min(seg.Off+seg.Len, end)
		if lo >= hi {
			continue
		}
		var fl uint32
		switch seg.Kind {
		case testenv.KindHole:
			fl = nbd.StateHole | nbd.StateZero
		case testenv.KindZero:
			fl = nbd.StateZero
		}
		if err := fn(nbd.Extent{Off: lo, Len: hi - lo, Flags: fl}); err != nil {
			return err
		}
	}
	return nil
}

// wantAllocation is what base:allocation must say of c, merged.
func wantAllocation(c *testenv.Content) []nbd.Extent {
	var out []nbd.Extent
	_ = contentSource{c}.Extents(context.Background(), 0, c.Size(), func(e nbd.Extent) error {
		out = appendMerged(out, e)
		return nil
	})
	return out
}

func appendMerged(out []nbd.Extent, e nbd.Extent) []nbd.Extent {
	if n := len(out); n > 0 && out[n-1].Flags == e.Flags && out[n-1].Off+out[n-1].Len == e.Off {
		out[n-1].Len += e.Len
		return out
	}
	return append(out, e)
}

func mapAll(t *testing.T, c *nbd.Client, name string) []nbd.Extent {
	t.Helper()
	var out []nbd.Extent
	err := c.Map(context.Background(), name, 0, c.Size(), func(e nbd.Extent) error {
		out = appendMerged(out, e)
		return nil
	})
	if err != nil {
		t.Fatalf("map %s: %v", name, err)
	}
	return out
}

func startServer(t *testing.T, s *nbd.Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, nbd.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return sock
}

func TestClientServerRoundTrip(t *testing.T) {
	content, err := testenv.NewContent(96<<20, 11, testenv.Fill{})
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "disk", Description: "test disk", Source: contentSource{content}}}, MaxBlock: 1 << 20}
	sock := startServer(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "disk", MetaContexts: []string{nbd.ContextBaseAllocation, "qemu:dirty-bitmap:x"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info := c.Info()
	if info.Size != content.Size() || info.MaxBlock != 1<<20 || info.Description != "test disk" || info.Flags&nbd.FlagReadOnly == 0 {
		t.Fatalf("info %+v", info)
	}
	if got := c.Contexts(); len(got) != 1 || got[0] != nbd.ContextBaseAllocation {
		t.Fatalf("contexts %v", got)
	}
	// The whole export in one Read: split into 1 MiB requests, all in flight.
	got := make([]byte, content.Size())
	if err := c.Read(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, content.Size())
	_, _ = content.ReadAt(want, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("data differs")
	}
	// Concurrent unaligned reads from many goroutines.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			off := int64(i) * 1234567 % (content.Size() - 300000)
			b := make([]byte, 300000)
			if err := c.Read(ctx, b, off); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(b, want[off:off+300000]) {
				errs <- errors.New("concurrent read differs")
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if ext, want := mapAll(t, c, nbd.ContextBaseAllocation), wantAllocation(content); !equalExtents(ext, want) {
		t.Fatalf("map:\n got %v\nwant %v", ext, want)
	}
	// Bad requests are refused with errors that say what is wrong.
	if err := c.Read(ctx, make([]byte, 10), content.Size()-5); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("read past end: %v", err)
	}
	if err := c.Write(ctx, []byte("x"), 0, false); !errors.Is(err, nbd.ErrUnsupported) {
		t.Errorf("write to read-only export: %v", err)
	}
	if err := c.Map(ctx, "qemu:dirty-bitmap:x", 0, 1, func(nbd.Extent) error { return nil }); !errors.Is(err, nbd.ErrUnsupported) {
		t.Errorf("map of a context not granted: %v", err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Errorf("flush: %v", err)
	}

	// Simple replies only.
	s, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "disk", NoStructured: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := make([]byte, 3<<20)
	if err := s.Read(ctx, b, 5<<20); err != nil || !bytes.Equal(b, want[5<<20:8<<20]) {
		t.Fatalf("simple read: %v", err)
	}
	if _, err := s.BlockStatus(ctx, 0, 1); !errors.Is(err, nbd.ErrUnsupported) {
		t.Errorf("block status without contexts: %v", err)
	}

	// Unknown export.
	_, err = nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "nosuch"})
	var oe *nbd.OptionError
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Errorf("unknown export: %v", err)
	}
}

func equalExtents(a, b []nbd.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestServerCloseEndsClients(t *testing.T) {
	content, _ := testenv.NewContent(4<<20, 1, testenv.Fill{})
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "", Source: contentSource{content}}}}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	ctx := context.Background()
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if err := <-done; !errors.Is(err, nbd.ErrServerClosed) {
		t.Fatalf("serve returned %v", err)
	}
	if err := c.Read(ctx, make([]byte, 512), 0); err == nil {
		t.Fatal("read after server close succeeded")
	}
	c.Close()
}
