package jobs

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// memStore records what the manager saves.
type memStore struct {
	mu   sync.Mutex
	jobs map[string]api.Job
	logs map[string][]api.LogLine
}

func newStore() *memStore {
	return &memStore{jobs: map[string]api.Job{}, logs: map[string][]api.LogLine{}}
}

func (m *memStore) SaveJob(_ context.Context, j api.Job, _ int, _ []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.jobs[j.ID] = j
	return nil
}

func (m *memStore) AppendLog(_ context.Context, l api.LogLine) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.logs[l.Job] = append(m.logs[l.Job], l)
	return nil
}

func (m *memStore) get(id string) api.Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.jobs[id]
}

func wait(t *testing.T, m *Manager, id string) api.Job {
	return waitStore(t, m, nil, id)
}

func waitStore(t *testing.T, m *Manager, st *memStore, id string) api.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var last api.Job
	err := m.Watch(ctx, id, time.Millisecond, func(j api.Job) error { last = j; return nil })
	if errors.Is(err, ErrNotLive) {
		time.Sleep(10 * time.Millisecond)
		if st == nil {
			st = m.cfg.Store.(*memStore)
		}
		return st.get(id)
	}
	if err != nil {
		t.Fatal(err)
	}
	return last
}

func TestBusyLimitsAndCancel(t *testing.T) {
	st := newStore()
	m := New(Config{Store: st, MaxJobs: 2, MaxPerTarget: 1})
	release := make(chan struct{})
	started := make(chan string, 10)
	blocker := func(ctx context.Context, h *Handle) (*api.JobResult, error) {
		started <- h.ID()
		h.Progress("vda", 50, 100)
		h.Log().Info("working", "disk", "vda")
		select {
		case <-release:
			return &api.JobResult{}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	a, err := m.Submit(Spec{Kind: "backup", Domain: "a", Key: "A", Target: "t1", Run: blocker})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(Spec{Kind: "backup", Domain: "a", Key: "A", Target: "t2", Run: blocker}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second job of a domain: %v", err)
	}
	b, _ := m.Submit(Spec{Kind: "backup", Domain: "b", Key: "B", Target: "t1", Run: blocker}) // waits: t1 is full
	c, _ := m.Submit(Spec{Kind: "backup", Domain: "c", Key: "C", Target: "t2", Run: blocker})
	d, _ := m.Submit(Spec{Kind: "backup", Domain: "d", Key: "D", Target: "t3", Run: blocker}) // waits: host is full
	got := map[string]bool{<-started: true, <-started: true}
	if !got[a.ID] || !got[c.ID] {
		t.Fatalf("started %v, want a and c", got)
	}
	if j, _ := m.Get(b.ID); j.State != api.Queued {
		t.Fatalf("b is %s, want queued behind the target limit", j.State)
	}
	// Cancel queued d: it ends at once and never starts.
	if j, err := m.Cancel(d.ID); err != nil || j.State != api.Cancelled {
		t.Fatalf("cancel queued: %+v %v", j, err)
	}
	// Cancel running a: b takes its slot.
	if _, err := m.Cancel(a.ID); err != nil {
		t.Fatal(err)
	}
	if ja := wait(t, m, a.ID); ja.State != api.Cancelled || ja.ErrorCode != api.CodeCancelled {
		t.Fatalf("a: %+v", ja)
	}
	if id := <-started; id != b.ID {
		t.Fatalf("started %s, want b", id)
	}
	close(release)
	for _, id := range []string{b.ID, c.ID} {
		if j := wait(t, m, id); j.State != api.Succeeded {
			t.Fatalf("%s: %+v", id, j)
		}
	}
	select {
	case id := <-started:
		t.Fatalf("cancelled queued job %s started", id)
	default:
	}
	time.Sleep(10 * time.Millisecond)
	if j := st.get(b.ID); j.State != api.Succeeded || j.Progress.Done != 50 || len(j.Progress.Disks) != 1 {
		t.Fatalf("stored b: %+v", j)
	}
	if len(st.logs[b.ID]) == 0 || st.logs[b.ID][0].Attrs["disk"] != "vda" {
		t.Fatalf("logs of b: %+v", st.logs[b.ID])
	}
}

func TestRetryPanicAndShutdown(t *testing.T) {
	m := New(Config{Store: newStore(), Backoff: time.Millisecond})
	transient := errors.New("target down")
	n := 0
	j, _ := m.Submit(Spec{Kind: "backup", Key: "A", Retry: func(err error) bool { return errors.Is(err, transient) },
		Run: func(context.Context, *Handle) (*api.JobResult, error) {
			if n++; n < 3 {
				return nil, transient
			}
			return &api.JobResult{}, nil
		}})
	if got := wait(t, m, j.ID); got.State != api.Succeeded || got.Attempts != 3 {
		t.Fatalf("retried job: %+v", got)
	}
	p, _ := m.Submit(Spec{Kind: "verify", Run: func(context.Context, *Handle) (*api.JobResult, error) { panic("boom") }})
	if got := wait(t, m, p.ID); got.State != api.Failed || got.Error != "job panicked: boom" {
		t.Fatalf("panicking job: %+v", got)
	}
	stuck, _ := m.Submit(Spec{Kind: "backup", Run: func(ctx context.Context, _ *Handle) (*api.JobResult, error) {
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // undoing what it started
		return nil, ctx.Err()
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if left := m.Shutdown(ctx); len(left) != 0 {
		t.Fatalf("left after shutdown: %+v", left)
	}
	if _, ok := m.Get(stuck.ID); ok {
		t.Fatal("job live after shutdown")
	}
	if _, err := m.Submit(Spec{Kind: "backup", Run: nil}); !errors.Is(err, ErrShutdown) {
		t.Fatalf("submit after shutdown: %v", err)
	}
}
