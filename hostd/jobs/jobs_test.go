package jobs

import (
	"context"
	"errors"
	"slices"
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

// TestTargetLimitsUnlimitedAndWait: a target's own limit holds; an
// unlimited job (a policy run) starts while the limits are full and waits
// for the jobs it submits; Wait finds jobs that already ended; Ended hears
// of every job.
func TestTargetLimitsUnlimitedAndWait(t *testing.T) {
	var mu sync.Mutex
	ended := map[string]api.JobState{}
	m := New(Config{Store: newStore(), MaxJobs: 1, MaxPerTarget: 1, TargetLimits: map[string]int{"wide": 3},
		Ended: func(j api.Job) { mu.Lock(); ended[j.ID] = j.State; mu.Unlock() }})
	release := make(chan struct{})
	var running, most int
	block := func(ctx context.Context, h *Handle) (*api.JobResult, error) {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		<-release
		mu.Lock()
		running--
		mu.Unlock()
		return nil, nil
	}
	m.cfg.MaxJobs = 8 // the host allows 8, "wide" 3, others 1
	var ids []string
	for i := 0; i < 5; i++ {
		j, err := m.Submit(Spec{Kind: "backup", Target: "wide", Run: block})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	if running != 3 {
		t.Errorf("%d jobs running on a target limited to 3", running)
	}
	mu.Unlock()
	// An unlimited parent starts although the target is full, and waits
	// for its child.
	parent, _ := m.Submit(Spec{Kind: "policy", Unlimited: true, Run: func(ctx context.Context, h *Handle) (*api.JobResult, error) {
		c, err := m.Submit(Spec{Kind: "backup", Target: "wide", Parent: h.ID(), Run: func(context.Context, *Handle) (*api.JobResult, error) { return nil, nil }})
		if err != nil {
			return nil, err
		}
		final, err := m.Wait(ctx, c.ID)
		if err == nil && final.State != api.Succeeded {
			err = errors.New(final.Error)
		}
		return nil, err
	}})
	close(release)
	final, err := m.Wait(context.Background(), parent.ID)
	if err != nil || final.State != api.Succeeded {
		t.Fatalf("parent: %+v %v", final, err)
	}
	for _, id := range ids {
		if j, err := m.Wait(context.Background(), id); err != nil || j.State != api.Succeeded {
			t.Errorf("wait %s after it ended: %+v %v", id, j, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if most != 3 || len(ended) != 7 {
		t.Errorf("at most %d at once, %d ends heard of: want 3 and 7", most, len(ended))
	}
}

// TestExclusiveJobs: a GC on a target waits for its backups, runs alone,
// and holds back the backups queued after it; other targets go on.
func TestExclusiveJobs(t *testing.T) {
	m := New(Config{Store: newStore(), MaxJobs: 8, MaxPerTarget: 4})
	var mu sync.Mutex
	var events []string
	release := map[string]chan struct{}{}
	job := func(name string) func(context.Context, *Handle) (*api.JobResult, error) {
		ch := make(chan struct{})
		release[name] = ch
		return func(context.Context, *Handle) (*api.JobResult, error) {
			mu.Lock()
			events = append(events, "start "+name)
			mu.Unlock()
			<-ch
			mu.Lock()
			events = append(events, "end "+name)
			mu.Unlock()
			return nil, nil
		}
	}
	submit := func(name, target string, excl bool) string {
		j, err := m.Submit(Spec{Kind: name, Target: target, Exclusive: excl, Run: job(name)})
		if err != nil {
			t.Fatal(err)
		}
		return j.ID
	}
	started := func(name string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(events, "start "+name)
	}
	settle := func() { time.Sleep(30 * time.Millisecond) }
	submit("b1", "a", false)
	gc := submit("gc", "a", true)
	submit("b2", "a", false)
	other := submit("b3", "z", false)
	settle()
	if !started("b1") || started("gc") || started("b2") || !started("b3") {
		t.Fatalf("events %v: want b1 and b3 running, gc waiting for b1, b2 behind gc", events)
	}
	close(release["b1"])
	settle()
	if !started("gc") || started("b2") {
		t.Fatalf("events %v: want gc alone on a", events)
	}
	close(release["gc"])
	close(release["b3"])
	settle()
	close(release["b2"])
	for _, id := range []string{gc, other} {
		if _, err := m.Wait(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	m.Shutdown(context.Background())
}
