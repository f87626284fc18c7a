package target

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultLockStale is how long a lock that is not refreshed stays valid.
// Holders refresh every sixth of it; one that could not for half of it
// gives up (ErrLockLost) before anyone may take its lock as stale.
const DefaultLockStale = 30 * time.Minute

// lockRaceWait is how long Check waits for a conflicting lock to go (a
// racer backing off) before it takes it as real.
const lockRaceWait = 5 * time.Second

// ErrLocked means another process holds a conflicting lock.
var ErrLocked = errors.New("repository is locked")

// ErrLockLost means a held lock can no longer be relied on: it could not
// be refreshed for half the stale period, or it was removed or rewritten
// by someone else. Whatever it guarded must be given up.
var ErrLockLost = errors.New("repository lock lost")

// Owner identifies a lock's holder across hosts: hostnames repeat (clones,
// "localhost", containers), so a holder is this machine only when its
// machine ID and boot ID are ours, and the same process only when its
// PID has the recorded start time.
type Owner struct {
	Host      string `json:"host"`
	MachineID string `json:"machine_id,omitempty"`
	BootID    string `json:"boot_id,omitempty"`
	PID       int    `json:"pid"`
	// Start is the process's start time in clock ticks since boot
	// (/proc/PID/stat field 22): with BootID, it tells a PID reused by
	// another process.
	Start uint64 `json:"start,omitempty"`
}

type lockInfo struct {
	Owner
	Exclusive bool      `json:"exclusive"`
	Time      time.Time `json:"time"` // the holder's clock: shown, never compared
	// Point and What are set on holds (holds/): the point held, and by
	// what (a session).
	Point string `json:"point,omitempty"`
	What  string `json:"what,omitempty"`
}

// Lock is a held repository lock. Its holder refreshes it until Unlock.
type Lock struct {
	r     *Repository
	key   string
	info  lockInfo
	stale time.Duration
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once

	writeMu sync.Mutex // a write and Check's look at the object do not interleave
	mu      sync.Mutex
	lastOK  time.Time // when a refresh last succeeded (our monotonic clock)
	modTime time.Time // the lock object's ModTime on the backend then
	lost    error
}

// localOwner describes this process.
func localOwner(host string) Owner {
	if host == "" {
		host, _ = os.Hostname()
	}
	o := Owner{Host: host, MachineID: readID("/etc/machine-id", "/var/lib/dbus/machine-id"),
		BootID: readID("/proc/sys/kernel/random/boot_id"), PID: os.Getpid()}
	o.Start, _ = processStart(o.PID)
	return o
}

func readID(paths ...string) string {
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			if s := strings.TrimSpace(string(b)); s != "" {
				return s
			}
		}
	}
	return ""
}

// processStart reads a process's start time from /proc/PID/stat.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22
}

// deadHere reports whether o is a process of this very boot of this
// machine that no longer runs. A holder on another machine, or one we
// cannot place (no machine ID), is never judged dead: its lock ages out.
func (o Owner) deadHere(self Owner) bool {
	if o.MachineID == "" || o.MachineID != self.MachineID || o.BootID == "" || o.BootID != self.BootID {
		return false
	}
	start, err := processStart(o.PID)
	return err != nil || (o.Start != 0 && start != o.Start)
}

// Lock takes a shared lock (backups) or an exclusive one (prune, GC). It
// fails with an error wrapping ErrLocked, naming the holder, on conflict.
// Other locks are judged stale by the backend's own modification times,
// compared with our freshly written lock's, so hosts' clocks never meet.
func (r *Repository) Lock(ctx context.Context, exclusive bool) (*Lock, error) {
	l, err := r.newLock(ctx, "locks/", lockInfo{Owner: r.owner, Exclusive: exclusive, Time: r.now().UTC()})
	if err != nil {
		return nil, err
	}
	conflict, err := r.conflict(ctx, l, exclusive)
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
	l.start()
	return l, nil
}

// newLock writes a new lock object under prefix (locks/ or holds/).
func (r *Repository) newLock(ctx context.Context, prefix string, info lockInfo) (*Lock, error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	l := &Lock{r: r, key: prefix + hex.EncodeToString(rnd[:]), stale: r.lockStale, info: info}
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// start refreshes l until Unlock.
func (l *Lock) start() {
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go l.refresh()
}

// conflict returns a live lock other than l that conflicts with a lock of
// the given kind, removing the locks of our own dead processes.
func (r *Repository) conflict(ctx context.Context, l *Lock, exclusive bool) (*lockInfo, error) {
	var conflict *lockInfo
	err := r.b.List(ctx, "locks/", func(fi ObjectInfo) error {
		if fi.Key == l.key || conflict != nil {
			return nil
		}
		o, err := r.readLock(ctx, fi)
		if err != nil || o == nil {
			return err
		}
		if l.backendAge(fi.ModTime) > l.stale {
			return nil
		}
		if o.deadHere(r.owner) {
			r.log.Info("removing the lock of a process that no longer runs", "lock", fi.Key, "pid", o.PID)
			_ = r.b.Delete(ctx, fi.Key)
			return nil
		}
		if exclusive || o.Exclusive {
			conflict = o
		}
		return nil
	})
	return conflict, err
}

// readLock reads a lock object; nil for one that vanished or is no lock.
func (r *Repository) readLock(ctx context.Context, fi ObjectInfo) (*lockInfo, error) {
	b, err := r.b.Get(ctx, fi.Key, 0, 64<<10)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var o lockInfo
	if json.Unmarshal(b, &o) != nil {
		return nil, nil // a torn or foreign file is not a lock
	}
	return &o, nil
}

// backendAge is how long before l's last write the backend says an object
// was modified.
func (l *Lock) backendAge(mod time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.modTime.Sub(mod)
}

// backendNow is the backend's time at our last write of the lock.
func (l *Lock) backendNow() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.modTime
}

// write stores the lock and records its backend modification time.
func (l *Lock) write(ctx context.Context) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	b, _ := json.Marshal(l.info)
	if err := l.r.b.Put(ctx, l.key, b); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	fi, err := l.r.b.Stat(ctx, l.key)
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	l.mu.Lock()
	l.lastOK, l.modTime = time.Now(), fi.ModTime
	l.mu.Unlock()
	return nil
}

func (l *Lock) refresh() {
	defer close(l.done)
	t := time.NewTicker(l.stale / 6)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), l.stale/6)
			err := l.unchanged(ctx)
			if errors.Is(err, ErrLockLost) {
				// Broken by someone who took it as stale: writing it
				// again would hide that from Check.
				l.mu.Lock()
				l.lost = err
				l.mu.Unlock()
			} else if err == nil {
				l.info.Time = l.r.now().UTC()
				err = l.write(ctx)
			}
			cancel()
			if err != nil {
				l.r.log.Warn("refreshing repository lock failed", "lock", l.key, "err", err)
			}
			_ = l.Err()
		}
	}
}

// Err returns an error wrapping ErrLockLost once the lock could not be
// refreshed for half the stale period, or was found broken; it stays lost.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost == nil && time.Since(l.lastOK) > l.stale/2 {
		l.lost = fmt.Errorf("%w: not refreshed for %v (others may take it as stale after %v)", ErrLockLost, time.Since(l.lastOK).Round(time.Second), l.stale)
	}
	return l.lost
}

// unchanged confirms the lock object is still there as we last wrote it.
func (l *Lock) unchanged(ctx context.Context) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	fi, err := l.r.b.Stat(ctx, l.key)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: the lock object was removed", ErrLockLost)
	}
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	l.mu.Lock()
	changed := !fi.ModTime.Equal(l.modTime)
	l.mu.Unlock()
	if changed {
		return fmt.Errorf("%w: the lock object was rewritten by someone else", ErrLockLost)
	}
	return nil
}

// Check confirms, just before a commit, that the lock still guards us: it
// was refreshed in time, its object is still ours and unchanged since our
// last write (nobody broke or replaced it), and no exclusive lock was
// taken beside it (by someone who took ours as stale).
func (l *Lock) Check(ctx context.Context) error {
	if err := l.Err(); err != nil {
		return err
	}
	if err := l.unchanged(ctx); err != nil {
		return err
	}
	// The locks that conflict with ours (for a shared lock: exclusive
	// ones only) can only stay if their holder took ours as stale. One
	// may be there for a moment: a racer that wrote its lock, saw ours
	// and is backing off (found by TestTwoHostsOneBucket: a backup failed
	// as a prune's attempt raced its commit). Look again before giving up.
	other, err := l.r.conflict(ctx, l, l.info.Exclusive)
	for deadline := time.Now().Add(lockRaceWait); err == nil && other != nil && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		other, err = l.r.conflict(ctx, l, l.info.Exclusive)
	}
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if other != nil {
		return fmt.Errorf("%w: a conflicting lock of pid %d on %s (exclusive=%v) was taken beside ours", ErrLockLost, other.PID, other.Host, other.Exclusive)
	}
	return nil
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
