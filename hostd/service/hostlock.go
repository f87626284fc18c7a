package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/virtkeep/virtkeep/hostd/statedir"
)

// ErrHostBusy is returned when another virtkeep process (the daemon, or a
// CLI running in its own process) holds the host lock.
var ErrHostBusy = errors.New("another virtkeep holds this host's backup state")

// LockMode says how New takes the host lock (an flock on
// state_dir/host.lock that holds the holder's PID).
type LockMode int

const (
	// LockOrFail takes the lock or fails at once with ErrHostBusy (a CLI
	// run in process).
	LockOrFail LockMode = iota
	// LockWait waits for the lock (the daemon, behind a CLI's backup).
	LockWait
	// LockIfFree takes the lock when it is free and otherwise runs read
	// only: answers from the catalog as it is, nothing changed (list,
	// info, and the NBD server of a mount).
	LockIfFree
)

type hostLock struct {
	f    *os.File
	path string
}

func takeHostLock(ctx context.Context, stateDir string, mode LockMode, log *slog.Logger) (*hostLock, error) {
	path := filepath.Join(stateDir, "host.lock")
	f, err := statedir.Flock(ctx, path, mode == LockWait, func() {
		log.Warn("waiting for the host lock", "holder", holderOf(path))
	})
	switch {
	case errors.Is(err, statedir.ErrHeld):
		return nil, fmt.Errorf("%s: %w", holderOf(path), ErrHostBusy)
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, fmt.Errorf("host lock: %w", err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &hostLock{f: f, path: path}, nil
}

// holderOf names the process holding the lock at path, for messages.
func holderOf(path string) string {
	b, _ := os.ReadFile(path)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return "another virtkeep process holds " + path
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	name := strings.TrimSpace(string(comm))
	if name == "" {
		name = "virtkeep"
	}
	return fmt.Sprintf("%s (pid %d) holds %s", name, pid, path)
}

func (l *hostLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

func (s *Service) lockHolder() string {
	return holderOf(filepath.Join(s.cfg.StateDir, "host.lock"))
}
