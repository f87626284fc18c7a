// Package jobs runs the host's long operations as jobs: a queue with a
// limit per host and per target, one job per domain at a time, cancel,
// retries with backoff for errors the submitter calls transient, progress
// with rate and ETA, log lines, and every change recorded in a Store (the
// catalog). It knows nothing of what a job does: Spec.Run does it.
package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// Errors of Submit, Cancel and Watch.
var (
	ErrBusy     = errors.New("the domain has a job already")
	ErrShutdown = errors.New("shutting down: no new jobs")
	ErrNotLive  = errors.New("no such job running or queued")
)

// Store records jobs and their logs (hostd/catalog.DB).
type Store interface {
	SaveJob(ctx context.Context, j api.Job, holder int, request []byte) error
	AppendLog(ctx context.Context, l api.LogLine) error
}

// Config sets the limits and the store.
type Config struct {
	Store        Store
	Log          *slog.Logger // the daemon's own log; job lines go there too
	MaxJobs      int          // running at once on the host (default 2)
	MaxPerTarget int          // running at once per target (default 1)
	// Backoff is the wait before the first retry; it doubles (default 5 s).
	Backoff time.Duration
	// TargetLimits overrides MaxPerTarget for the targets it names.
	TargetLimits map[string]int
	// Ended, if set, is told of every job that ended, in its final state,
	// on the job's goroutine (it must not block).
	Ended func(api.Job)
	// Now is the time jobs are created, started and ended at (default
	// time.Now): the service's clock, which also ages them out.
	Now func() time.Time
}

// Spec is a job to run.
type Spec struct {
	Kind   string
	Domain string // shown
	// Key, when set, is what only one live job may hold at a time (a
	// domain's UUID): a second Submit with the same Key gets ErrBusy.
	Key     string
	Target  string // counted against MaxPerTarget when set
	Request any    // recorded as JSON
	Run     func(ctx context.Context, h *Handle) (*api.JobResult, error)
	// Retry, when set, says whether a failure may be retried: transient,
	// and leaving things as they were. Attempts bounds the runs (default 3).
	Retry    func(error) bool
	Attempts int
	// Code classifies a failure for the job's ErrorCode.
	Code func(error) api.Code
	// Unlimited jobs start at once and do not count against the limits:
	// a policy run, which only submits and waits for jobs of its own.
	Unlimited bool
	// Exclusive jobs run alone on their Target (on every target when it
	// is empty): prune and GC, which take the repository's exclusive
	// lock, never meet this host's backups and copies holding it shared.
	Exclusive bool
	// Policy and Parent are shown (api.Job).
	Policy, Parent string
}

// Manager runs jobs.
type Manager struct {
	cfg     Config
	mu      sync.Mutex
	live    map[string]*job // queued or running
	order   []*job          // queued, in submission order
	closed  bool
	wg      sync.WaitGroup
	running int
	perTgt  map[string]int
	// excl counts the exclusive jobs running per target ("" : all).
	excl map[string]int
	// recent are the last jobs that ended, for Wait.
	recent      map[string]*Handle
	recentOrder []string
}

// recentKept is how many ended jobs Wait still finds.
const recentKept = 1024

type job struct {
	spec   Spec
	h      *Handle
	cancel context.CancelFunc
	ctx    context.Context
	// dispatched is set (under Manager.mu) when the job got its slots.
	dispatched bool
}

// New returns a manager; nothing runs until Submit.
func New(cfg Config) *Manager {
	if cfg.MaxJobs <= 0 {
		cfg.MaxJobs = 2
	}
	if cfg.MaxPerTarget <= 0 {
		cfg.MaxPerTarget = 1
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Manager{cfg: cfg, live: map[string]*job{}, perTgt: map[string]int{}, excl: map[string]int{}, recent: map[string]*Handle{}}
}

func newID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Submit queues a job and returns it at once.
func (m *Manager) Submit(s Spec) (api.Job, error) {
	req, err := json.Marshal(s.Request)
	if err != nil {
		return api.Job{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return api.Job{}, ErrShutdown
	}
	if s.Key != "" {
		for _, j := range m.live {
			if j.spec.Key == s.Key {
				o := j.h.snapshot()
				who := "domain " + s.Domain
				if s.Domain == "" {
					who = s.Key
				}
				return api.Job{}, fmt.Errorf("%s: job %s (%s) is %s: %w", who, o.ID, o.Kind, o.State, ErrBusy)
			}
		}
	}
	now := m.cfg.Now().UTC()
	ctx, cancel := context.WithCancel(context.Background())
	j := &job{spec: s, cancel: cancel, ctx: ctx}
	j.h = &Handle{m: m, changed: make(chan struct{}), ended: make(chan struct{}), request: req,
		job: api.Job{ID: newID(now), Kind: s.Kind, Domain: s.Domain, Target: s.Target, State: api.Queued, Created: now,
			Policy: s.Policy, Parent: s.Parent}}
	j.h.log = slog.New(&logHandler{h: j.h})
	m.live[j.h.job.ID] = j
	m.order = append(m.order, j)
	j.h.save(true)
	first := j.h.snapshot()
	m.cfg.Log.Info("job queued", "job", first.ID, "kind", s.Kind, "domain", s.Domain, "target", s.Target)
	m.dispatchLocked()
	return first, nil
}

// dispatchLocked starts the queued jobs that fit the limits, in order.
// An exclusive job that waits holds back the jobs queued after it on its
// target, so that a stream of backups cannot starve a GC.
func (m *Manager) dispatchLocked() {
	rest := m.order[:0]
	waiting := map[string]bool{} // targets an exclusive job waits for ("": all)
	for _, j := range m.order {
		if j.ctx.Err() != nil { // cancelled while queued
			continue
		}
		t := j.spec.Target
		held := waiting[""] || waiting[t] || (j.spec.Exclusive && t == "" && len(waiting) > 0)
		if !j.spec.Unlimited && (held || !m.fitsLocked(j.spec)) {
			if j.spec.Exclusive {
				waiting[t] = true
			}
			rest = append(rest, j)
			continue
		}
		j.dispatched = true
		if !j.spec.Unlimited {
			m.running++
			m.perTgt[j.spec.Target]++
			if j.spec.Exclusive {
				m.excl[j.spec.Target]++
			}
		}
		m.wg.Add(1)
		go m.run(j)
	}
	m.order = rest
}

// fitsLocked reports whether a job of spec s may start now: within the
// host's and its target's limits, and apart from exclusive jobs.
func (m *Manager) fitsLocked(s Spec) bool {
	t := s.Target
	switch {
	case m.running >= m.cfg.MaxJobs:
		return false
	case t != "" && m.perTgt[t] >= m.perTarget(t):
		return false
	case m.excl[""] > 0 || (t != "" && m.excl[t] > 0):
		return false // an exclusive job runs there
	case s.Exclusive && t == "":
		return m.running == 0
	case s.Exclusive:
		return m.perTgt[t] == 0 && m.perTgt[""] == 0
	}
	return true
}

func (m *Manager) perTarget(name string) int {
	if n, ok := m.cfg.TargetLimits[name]; ok && n > 0 {
		return n
	}
	return m.cfg.MaxPerTarget
}

func (m *Manager) run(j *job) {
	defer m.wg.Done()
	h := j.h
	h.update(func(a *api.Job) { a.State, a.Started = api.Running, h.m.cfg.Now().UTC() }, true)
	attempts := max(j.spec.Attempts, 3)
	if j.spec.Retry == nil {
		attempts = 1
	}
	var res *api.JobResult
	var err error
	for n := 1; ; n++ {
		h.update(func(a *api.Job) { a.Attempts = n }, false)
		res, err = safeRun(j.ctx, j.spec.Run, h)
		if err == nil || n >= attempts || j.ctx.Err() != nil || !j.spec.Retry(err) {
			break
		}
		wait := m.cfg.Backoff << (n - 1)
		h.log.Warn("transient error: retrying", "attempt", n, "in", wait.String(), "err", err)
		select {
		case <-j.ctx.Done():
		case <-time.After(wait):
		}
	}
	m.finish(j, res, err)
}

// safeRun turns a panic in a job into its error: one bad job must not
// take the daemon and every other job with it.
func safeRun(ctx context.Context, run func(context.Context, *Handle) (*api.JobResult, error), h *Handle) (res *api.JobResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("job panicked: %v", r)
		}
	}()
	return run(ctx, h)
}

func (m *Manager) finish(j *job, res *api.JobResult, err error) {
	h := j.h
	state, code, msg := api.Succeeded, api.Code(""), ""
	switch {
	case err == nil:
	case j.ctx.Err() != nil:
		state, code, msg = api.Cancelled, api.CodeCancelled, "cancelled"
		if !errors.Is(err, context.Canceled) {
			msg = "cancelled: " + err.Error()
		}
	default:
		state, msg = api.Failed, err.Error()
		code = api.CodeOf(err)
		if j.spec.Code != nil {
			code = j.spec.Code(err)
		}
	}
	if err != nil {
		h.log.Error("job "+string(state), "err", msg)
	}
	h.update(func(a *api.Job) {
		a.State, a.Ended, a.Result, a.Error, a.ErrorCode = state, h.m.cfg.Now().UTC(), res, msg, code
	}, true)
	m.cfg.Log.Info("job ended", "job", h.ID(), "kind", j.spec.Kind, "domain", j.spec.Domain, "state", state, "err", msg)
	m.mu.Lock()
	delete(m.live, h.ID())
	if !j.spec.Unlimited {
		m.running--
		m.perTgt[j.spec.Target]--
		if j.spec.Exclusive {
			m.excl[j.spec.Target]--
		}
	}
	m.keepRecentLocked(h)
	m.dispatchLocked()
	m.mu.Unlock()
	j.cancel()
	m.ended(h)
}

// ended tells Config.Ended, then watchers, that h's job has ended (its
// final state recorded): whoever waits for a job sees it ended only once
// its notifications and metrics have heard of it.
func (m *Manager) ended(h *Handle) {
	if m.cfg.Ended != nil {
		m.cfg.Ended(h.snapshot())
	}
	h.end()
}

func (m *Manager) keepRecentLocked(h *Handle) {
	m.recent[h.ID()] = h
	m.recentOrder = append(m.recentOrder, h.ID())
	if len(m.recentOrder) > recentKept {
		delete(m.recent, m.recentOrder[0])
		m.recentOrder = m.recentOrder[1:]
	}
}

// Wait waits until job id (live, or among the last that ended) has ended
// and returns its final state.
func (m *Manager) Wait(ctx context.Context, id string) (api.Job, error) {
	m.mu.Lock()
	var h *Handle
	if j, ok := m.live[id]; ok {
		h = j.h
	} else {
		h = m.recent[id]
	}
	m.mu.Unlock()
	if h == nil {
		return api.Job{}, fmt.Errorf("job %s: %w", id, ErrNotLive)
	}
	select {
	case <-h.ended:
		return h.snapshot(), nil
	case <-ctx.Done():
		return h.snapshot(), ctx.Err()
	}
}

// Get returns a live (queued or running) job.
func (m *Manager) Get(id string) (api.Job, bool) {
	m.mu.Lock()
	j, ok := m.live[id]
	m.mu.Unlock()
	if !ok {
		return api.Job{}, false
	}
	return j.h.snapshot(), true
}

// Live returns the queued and running jobs.
func (m *Manager) Live() []api.Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]api.Job, 0, len(m.live))
	for _, j := range m.live {
		out = append(out, j.h.snapshot())
	}
	return out
}

// Cancel cancels a live job: a queued one ends at once, a running one
// when its operation has undone what it started.
func (m *Manager) Cancel(id string) (api.Job, error) {
	m.mu.Lock()
	j, ok := m.live[id]
	m.mu.Unlock()
	if !ok {
		return api.Job{}, fmt.Errorf("job %s: %w", id, ErrNotLive)
	}
	j.h.log.Warn("cancel requested")
	j.cancel()
	m.mu.Lock()
	queued := !j.dispatched
	if queued {
		m.dispatchLocked() // drops it from the queue
		delete(m.live, id)
	}
	m.mu.Unlock()
	if queued {
		j.h.update(func(a *api.Job) {
			a.State, a.Ended, a.Error, a.ErrorCode = api.Cancelled, m.cfg.Now().UTC(), "cancelled before it started", api.CodeCancelled
		}, true)
		m.mu.Lock()
		m.keepRecentLocked(j.h)
		m.mu.Unlock()
		m.ended(j.h)
	}
	return j.h.snapshot(), nil
}

// Changed returns a channel closed at the live job's next change, or nil
// when the job is not live.
func (m *Manager) Changed(id string) <-chan struct{} {
	m.mu.Lock()
	j, ok := m.live[id]
	m.mu.Unlock()
	if !ok {
		return nil
	}
	j.h.mu.Lock()
	defer j.h.mu.Unlock()
	return j.h.changed
}

// Watch calls fn with the live job and after each change, at most every
// interval, until it ends (the final state is delivered as it happens).
func (m *Manager) Watch(ctx context.Context, id string, interval time.Duration, fn func(api.Job) error) error {
	m.mu.Lock()
	j, ok := m.live[id]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("job %s: %w", id, ErrNotLive)
	}
	for {
		j.h.mu.Lock()
		snap, ch := j.h.copyLocked(), j.h.changed
		j.h.mu.Unlock()
		if err := fn(snap); err != nil || snap.State.Ended() {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
		// At most one progress update per interval, but the end at once.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		case <-j.h.ended:
		}
	}
}

// Shutdown stops taking jobs, cancels every live one and waits until they
// have ended or ctx is done; it returns the jobs still running then.
func (m *Manager) Shutdown(ctx context.Context) []api.Job {
	m.mu.Lock()
	m.closed = true
	var ids []string
	for id := range m.live {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	for _, id := range ids {
		_, _ = m.Cancel(id)
	}
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return m.Live()
	}
}

// holder is the PID recorded as running the jobs.
var holder = os.Getpid()
