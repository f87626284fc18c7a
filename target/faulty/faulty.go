package faulty

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/virtkeep/virtkeep/target"
)

// ErrInjected is the error faulty returns.
var ErrInjected = errors.New("faulty: injected failure")

// Backend fails chosen operations of an inner backend.
type Backend struct {
	target.Backend

	mu sync.Mutex
	// FailPut, if set, decides whether a Put of key fails.
	failPut func(key string) bool
	failGet func(key string) bool
	puts    int
	// beforeList runs before a List whose prefix starts with its key.
	beforeList map[string]func()
}

var _ target.Backend = (*Backend)(nil)

// Wrap returns a backend that passes everything to inner until told to fail.
func Wrap(inner target.Backend) *Backend { return &Backend{Backend: inner} }

// FailPutAfter makes every Put whose key starts with prefix fail once n more
// Puts (of any key) have succeeded. n < 0 turns it off.
func (b *Backend) FailPutAfter(n int, prefix string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n < 0 {
		b.failPut = nil
		return
	}
	start := b.puts
	b.failPut = func(key string) bool { return b.puts-start >= n && strings.HasPrefix(key, prefix) }
}

// FailGet makes Gets of keys starting with prefix fail ("" turns it off).
func (b *Backend) FailGet(prefix string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if prefix == "" {
		b.failGet = nil
		return
	}
	b.failGet = func(key string) bool { return strings.HasPrefix(key, prefix) }
}

// Put fails when told to, else passes on.
func (b *Backend) Put(ctx context.Context, key string, data []byte) error {
	b.mu.Lock()
	fail := b.failPut != nil && b.failPut(key)
	if !fail {
		b.puts++
	}
	b.mu.Unlock()
	if fail {
		return ErrInjected
	}
	return b.Backend.Put(ctx, key, data)
}

// Get fails when told to, else passes on.
func (b *Backend) Get(ctx context.Context, key string, off, length int64) ([]byte, error) {
	b.mu.Lock()
	fail := b.failGet != nil && b.failGet(key)
	b.mu.Unlock()
	if fail {
		return nil, ErrInjected
	}
	return b.Backend.Get(ctx, key, off, length)
}

// BeforeList runs f (once per call) before each List of a prefix that
// starts with prefix, as a stall or an event of the test's own at that
// moment; nil f removes it.
func (b *Backend) BeforeList(prefix string, f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.beforeList == nil {
		b.beforeList = map[string]func(){}
	}
	if f == nil {
		delete(b.beforeList, prefix)
		return
	}
	b.beforeList[prefix] = f
}

// List runs the hooks for prefix, then passes on.
func (b *Backend) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	b.beforeListing(prefix)
	return b.Backend.List(ctx, prefix, fn)
}

// ListAfter runs the hooks List does and passes the listing on.
func (b *Backend) ListAfter(ctx context.Context, prefix, after string, fn func(target.ObjectInfo) error) error {
	b.beforeListing(prefix)
	return target.ListAfter(ctx, b.Backend, prefix, after, fn)
}

// beforeListing runs the hooks set for listings under prefix.
func (b *Backend) beforeListing(prefix string) {
	b.mu.Lock()
	var hooks []func()
	for p, f := range b.beforeList {
		if strings.HasPrefix(prefix, p) {
			hooks = append(hooks, f)
		}
	}
	b.mu.Unlock()
	for _, f := range hooks {
		f()
	}
}
