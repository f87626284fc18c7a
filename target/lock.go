package target

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	lockRefresh = 5 * time.Minute
	lockStale   = 30 * time.Minute
)

// ErrLocked means another process holds a conflicting lock.
var ErrLocked = errors.New("repository is locked")

type lockInfo struct {
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Exclusive bool      `json:"exclusive"`
	Time      time.Time `json:"time"`
}

// Lock is a held repository lock. Its holder refreshes it until Unlock.
type Lock struct {
	r    *Repository
	key  string
	info lockInfo
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Lock takes a shared lock (backups) or an exclusive one (prune, GC). It
// fails with an error wrapping ErrLocked, naming the holder, on conflict.
func (r *Repository) Lock(ctx context.Context, exclusive bool) (*Lock, error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	host := r.host
	if host == "" {
		host, _ = os.Hostname()
	}
	l := &Lock{r: r, key: "locks/" + hex.EncodeToString(rnd[:]), info: lockInfo{Host: host, PID: os.Getpid(), Exclusive: exclusive, Time: r.now().UTC()}}
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	var conflict *lockInfo
	err := r.b.List(ctx, "locks/", func(fi ObjectInfo) error {
		if fi.Key == l.key || conflict != nil {
			return nil
		}
		b, err := r.b.Get(ctx, fi.Key, 0, 64<<10)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var o lockInfo
		if json.Unmarshal(b, &o) != nil {
			return nil // a torn or foreign file is not a lock
		}
		if r.now().Sub(o.Time) > lockStale {
			return nil
		}
		if o.Host == host && !processAlive(o.PID) {
			// Our own host's holder is gone (killed, crashed): its lock is dead.
			r.log.Info("removing the lock of a process that no longer runs", "lock", fi.Key, "pid", o.PID)
			_ = r.b.Delete(ctx, fi.Key)
			return nil
		}
		if exclusive || o.Exclusive {
			conflict = &o
		}
		return nil
	})
	if err == nil && conflict != nil {
		kind := "shared"
		if conflict.Exclusive {
			kind = "exclusive"
		}
		err = fmt.Errorf("%w: %s lock held by pid %d on %s since %s", ErrLocked, kind, conflict.PID, conflict.Host, conflict.Time.Format(time.RFC3339))
	}
	if err != nil {
		_ = r.b.Delete(context.WithoutCancel(ctx), l.key)
		return nil, err
	}
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go l.refresh()
	return l, nil
}

func (l *Lock) write(ctx context.Context) error {
	b, _ := json.Marshal(l.info)
	if err := l.r.b.Put(ctx, l.key, b); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	return nil
}

func (l *Lock) refresh() {
	defer close(l.done)
	t := time.NewTicker(lockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.info.Time = l.r.now().UTC()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := l.write(ctx); err != nil {
				l.r.log.Warn("refreshing repository lock failed", "err", err)
			}
			cancel()
		}
	}
}

// Unlock releases the lock. It runs on a context of its own so a cancelled
// operation still releases it.
func (l *Lock) Unlock(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		err = l.r.b.Delete(cctx, l.key)
	})
	return err
}

// Locks lists the live locks, for status and for breaking stale ones.
func (r *Repository) Locks(ctx context.Context) ([]string, error) {
	var out []string
	err := r.b.List(ctx, "locks/", func(fi ObjectInfo) error {
		b, err := r.b.Get(ctx, fi.Key, 0, 64<<10)
		if err != nil {
			return nil
		}
		var o lockInfo
		if json.Unmarshal(b, &o) == nil && r.now().Sub(o.Time) <= lockStale {
			out = append(out, strings.TrimPrefix(fi.Key, "locks/")+": "+fmt.Sprintf("pid %d on %s exclusive=%v since %s", o.PID, o.Host, o.Exclusive, o.Time.Format(time.RFC3339)))
		}
		return nil
	})
	return out, err
}

// processAlive reports whether a process with pid runs on this host.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
