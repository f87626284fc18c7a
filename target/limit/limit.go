// Package limit wraps a target's backend with a bandwidth limit and a
// bound on its concurrent requests. One Shared per target holds the
// budget, so every repository the process opens on that target shares it.
package limit

import (
	"context"
	"sync"
	"time"

	"github.com/virtkeep/virtkeep/target"
)

// Limits are a target's limits; zero fields are unlimited.
type Limits struct {
	// BytesPerSecond bounds the data put and got, averaged over a second.
	BytesPerSecond int64
	// Requests bounds the requests in flight at once.
	Requests int
}

// Shared is one target's budget.
type Shared struct {
	l   Limits
	sem chan struct{}

	mu   sync.Mutex
	next time.Time // when the bytes granted so far have been "sent"
}

// New returns the budget for l.
func New(l Limits) *Shared {
	s := &Shared{l: l}
	if l.Requests > 0 {
		s.sem = make(chan struct{}, l.Requests)
	}
	return s
}

// Wrap returns b limited by s (b itself when s sets no limit).
func (s *Shared) Wrap(b target.Backend) target.Backend {
	if s == nil || s.l == (Limits{}) {
		return b
	}
	if ts, ok := b.(target.TempSweeper); ok {
		return &sweeping{&backend{Backend: b, s: s}, ts}
	}
	return &backend{Backend: b, s: s}
}

// sweeping is a limited backend whose inner backend sweeps temporary
// files (GC asks for it).
type sweeping struct {
	*backend
	target.TempSweeper
}

func (s *Shared) acquire(ctx context.Context) error {
	if s.sem == nil {
		return nil
	}
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Shared) release() {
	if s.sem != nil {
		<-s.sem
	}
}

// spend waits until n more bytes fit the rate: each byte books 1/rate
// seconds on a shared timeline that may run at most a second ahead of now
// without waiting (the burst).
func (s *Shared) spend(ctx context.Context, n int) error {
	if s.l.BytesPerSecond <= 0 || n <= 0 {
		return nil
	}
	s.mu.Lock()
	now := time.Now()
	if s.next.Before(now) {
		s.next = now
	}
	s.next = s.next.Add(time.Duration(float64(n) / float64(s.l.BytesPerSecond) * float64(time.Second)))
	wait := s.next.Sub(now) - time.Second
	s.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type backend struct {
	target.Backend
	s *Shared
}

func (b *backend) Put(ctx context.Context, key string, data []byte) error {
	if err := b.s.spend(ctx, len(data)); err != nil {
		return err
	}
	if err := b.s.acquire(ctx); err != nil {
		return err
	}
	defer b.s.release()
	return b.Backend.Put(ctx, key, data)
}

func (b *backend) Get(ctx context.Context, key string, off, length int64) ([]byte, error) {
	if err := b.s.acquire(ctx); err != nil {
		return nil, err
	}
	data, err := b.Backend.Get(ctx, key, off, length)
	b.s.release()
	if err != nil {
		return nil, err
	}
	return data, b.s.spend(ctx, len(data))
}

func (b *backend) Stat(ctx context.Context, key string) (target.ObjectInfo, error) {
	if err := b.s.acquire(ctx); err != nil {
		return target.ObjectInfo{}, err
	}
	defer b.s.release()
	return b.Backend.Stat(ctx, key)
}

// ListAfter passes the listing on (target.ListAfter).
func (b *backend) ListAfter(ctx context.Context, prefix, after string, fn func(target.ObjectInfo) error) error {
	return target.ListAfter(ctx, b.Backend, prefix, after, fn)
}

func (b *backend) Delete(ctx context.Context, key string) error {
	if err := b.s.acquire(ctx); err != nil {
		return err
	}
	defer b.s.release()
	return b.Backend.Delete(ctx, key)
}
