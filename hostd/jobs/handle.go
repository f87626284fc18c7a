package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// Handle is a running job's side of the manager: progress and log lines.
type Handle struct {
	m       *Manager
	log     *slog.Logger
	mu      sync.Mutex
	job     api.Job
	disks   map[string]api.DiskProgress
	changed chan struct{} // closed and replaced at every change
	ended   chan struct{} // closed once the job has ended
	request []byte        // the job's request as JSON
	seq     int64
	saved   time.Time
	// rate: done bytes at the start of the current window.
	winStart time.Time
	winDone  int64
}

// ID is the job's ID.
func (h *Handle) ID() string { return h.job.ID }

// Log is the job's logger: each record becomes a log line of the job (and
// a line of the daemon's own log).
func (h *Handle) Log() *slog.Logger { return h.log }

// Progress records one disk's progress; the job's is the sum over disks.
func (h *Handle) Progress(disk string, done, total int64) {
	h.mu.Lock()
	if h.disks == nil {
		h.disks = map[string]api.DiskProgress{}
	}
	h.disks[disk] = api.DiskProgress{Disk: disk, Done: done, Total: total}
	var p api.Progress
	for _, d := range h.disks {
		p.Done += d.Done
		p.Total += d.Total
		p.Disks = append(p.Disks, d)
	}
	sort.Slice(p.Disks, func(i, j int) bool { return p.Disks[i].Disk < p.Disks[j].Disk })
	now := time.Now()
	if h.winStart.IsZero() {
		h.winStart, h.winDone = now, p.Done
	}
	// The rate over a window of about five seconds, restarted as it ends.
	if el := now.Sub(h.winStart).Seconds(); el > 0.5 {
		p.Rate = float64(p.Done-h.winDone) / el
		if el > 5 {
			h.winStart, h.winDone = now, p.Done
		}
	} else {
		p.Rate = h.job.Progress.Rate
	}
	if p.Rate > 0 && p.Total > p.Done {
		p.ETASeconds = float64(p.Total-p.Done) / p.Rate
	}
	h.job.Progress = p
	persist := now.Sub(h.saved) > 2*time.Second
	h.notifyLocked()
	h.mu.Unlock()
	if persist {
		h.save(false)
	}
}

func (h *Handle) notifyLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// end tells watchers the job has ended, once its final state is recorded.
func (h *Handle) end() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.ended:
	default:
		close(h.ended)
	}
}

func (h *Handle) copyLocked() api.Job {
	j := h.job
	j.Progress.Disks = append([]api.DiskProgress(nil), j.Progress.Disks...)
	return j
}

func (h *Handle) snapshot() api.Job {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.copyLocked()
}

// update changes the job under its lock, tells watchers, and records it
// (always when persist is set, else at most every two seconds).
func (h *Handle) update(fn func(*api.Job), persist bool) {
	h.mu.Lock()
	fn(&h.job)
	h.notifyLocked()
	persist = persist || time.Since(h.saved) > 2*time.Second
	h.mu.Unlock()
	h.save(persist)
}

func (h *Handle) save(now bool) {
	if !now || h.m.cfg.Store == nil {
		return
	}
	h.mu.Lock()
	j := h.copyLocked()
	h.saved = time.Now()
	h.mu.Unlock()
	req := h.request
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.m.cfg.Store.SaveJob(ctx, j, holder, req); err != nil {
		h.m.cfg.Log.Error("recording job", "job", j.ID, "err", err)
	}
}

// logHandler makes a job's log records into its log lines.
type logHandler struct {
	h     *Handle
	attrs []slog.Attr
}

func (l *logHandler) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }

func (l *logHandler) Handle(ctx context.Context, r slog.Record) error {
	h := l.h
	line := api.LogLine{Job: h.ID(), Time: r.Time.UTC(), Level: r.Level.String(), Message: r.Message}
	add := func(a slog.Attr) bool {
		if line.Attrs == nil {
			line.Attrs = map[string]string{}
		}
		line.Attrs[a.Key] = fmt.Sprint(a.Value.Resolve().Any())
		return true
	}
	for _, a := range l.attrs {
		add(a)
	}
	r.Attrs(add)
	h.mu.Lock()
	h.seq++
	line.Seq = h.seq
	h.notifyLocked()
	h.mu.Unlock()
	if st := h.m.cfg.Store; st != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := st.AppendLog(sctx, line); err != nil {
			h.m.cfg.Log.Error("recording job log", "job", line.Job, "err", err)
		}
	}
	args := []any{"job", line.Job}
	for k, v := range line.Attrs {
		args = append(args, k, v)
	}
	h.m.cfg.Log.Log(ctx, r.Level, r.Message, args...)
	return nil
}

func (l *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{h: l.h, attrs: append(append([]slog.Attr(nil), l.attrs...), as...)}
}

func (l *logHandler) WithGroup(string) slog.Handler { return l }
