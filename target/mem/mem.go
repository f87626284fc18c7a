package mem

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/virtkeep/virtkeep/target"
)

// Mem keeps objects in memory.
type Mem struct {
	mu   sync.Mutex
	objs map[string]object
	now  func() time.Time
}

type object struct {
	data []byte
	mod  time.Time
}

var _ target.Backend = (*Mem)(nil)

// New returns an empty in-memory backend.
func New() *Mem { return &Mem{objs: map[string]object{}, now: time.Now} }

// SetClock replaces the clock that stamps modification times.
func (m *Mem) SetClock(now func() time.Time) {
	m.mu.Lock()
	m.now = now
	m.mu.Unlock()
}

// Put stores a copy of data.
func (m *Mem) Put(ctx context.Context, key string, data []byte) error {
	if err := target.CheckKey(key); err != nil {
		return fmt.Errorf("mem: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	m.objs[key] = object{append([]byte(nil), data...), m.now()}
	m.mu.Unlock()
	return nil
}

// Get returns a copy of a range of the object.
func (m *Mem) Get(ctx context.Context, key string, off, length int64) ([]byte, error) {
	if err := target.CheckKey(key); err != nil {
		return nil, fmt.Errorf("mem: %w", err)
	}
	if off < 0 {
		return nil, fmt.Errorf("mem: get %s: negative offset %d", key, off)
	}
	m.mu.Lock()
	o, ok := m.objs[key]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("mem: %s: %w", key, target.ErrNotFound)
	}
	if off > int64(len(o.data)) {
		return []byte{}, nil
	}
	end := int64(len(o.data))
	if length >= 0 {
		end = min(end, off+length)
	}
	return append([]byte(nil), o.data[off:end]...), nil
}

// Stat describes the object.
func (m *Mem) Stat(ctx context.Context, key string) (target.ObjectInfo, error) {
	if err := target.CheckKey(key); err != nil {
		return target.ObjectInfo{}, fmt.Errorf("mem: %w", err)
	}
	m.mu.Lock()
	o, ok := m.objs[key]
	m.mu.Unlock()
	if !ok {
		return target.ObjectInfo{}, fmt.Errorf("mem: %s: %w", key, target.ErrNotFound)
	}
	return target.ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.mod}, nil
}

// List lists a snapshot of the keys under prefix.
func (m *Mem) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	m.mu.Lock()
	var infos []target.ObjectInfo
	for k, o := range m.objs {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, target.ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.mod})
		}
	}
	m.mu.Unlock()
	for _, i := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(i); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes the object.
func (m *Mem) Delete(ctx context.Context, key string) error {
	if err := target.CheckKey(key); err != nil {
		return fmt.Errorf("mem: %w", err)
	}
	m.mu.Lock()
	delete(m.objs, key)
	m.mu.Unlock()
	return nil
}

// Sync does nothing: memory is as durable as it gets.
func (m *Mem) Sync(context.Context) error { return nil }

// SyncObjects does nothing: memory is as durable as it gets.
func (m *Mem) SyncObjects(context.Context, []string) error { return nil }

// Properties describes the backend.
func (m *Mem) Properties() target.Properties { return target.Properties{Name: "mem"} }

// Close does nothing.
func (m *Mem) Close() error { return nil }
