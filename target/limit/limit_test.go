package limit_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/limit"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/target/targettest"
)

// The limited backend is still a backend.
func TestConformance(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend {
		return limit.New(limit.Limits{BytesPerSecond: 1 << 30, Requests: 4}).Wrap(mem.New())
	})
}

// TestRate: 3 MiB through a 1 MiB/s budget shared by two wrappers takes
// about two seconds (the first second is the burst).
func TestRate(t *testing.T) {
	s := limit.New(limit.Limits{BytesPerSecond: 1 << 20})
	a, b := s.Wrap(mem.New()), s.Wrap(mem.New())
	data := make([]byte, 256<<10)
	start := time.Now()
	var wg sync.WaitGroup
	for _, be := range []target.Backend{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 6; i++ {
				if err := be.Put(context.Background(), "k", data); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if d := time.Since(start); d < 1800*time.Millisecond || d > 5*time.Second {
		t.Fatalf("3 MiB at 1 MiB/s took %s: want about 2 s", d)
	}
}

type slow struct {
	target.Backend
	in, most atomic.Int32
}

func (s *slow) Stat(ctx context.Context, key string) (target.ObjectInfo, error) {
	n := s.in.Add(1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	time.Sleep(5 * time.Millisecond)
	s.in.Add(-1)
	return s.Backend.Stat(ctx, key)
}

// TestRequests: never more requests in flight than allowed.
func TestRequests(t *testing.T) {
	inner := &slow{Backend: mem.New()}
	b := limit.New(limit.Limits{Requests: 3}).Wrap(inner)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = b.Stat(context.Background(), "x") }()
	}
	wg.Wait()
	if m := inner.most.Load(); m != 3 {
		t.Fatalf("%d requests in flight at most, want 3", m)
	}
}
