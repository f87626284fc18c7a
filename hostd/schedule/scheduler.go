package schedule

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// Clock is the scheduler's time: Real, or a fake in tests.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// Real is the wall clock.
type Real struct{}

func (Real) Now() time.Time                         { return time.Now() }
func (Real) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Entry is something to run on one or more cron schedules.
type Entry struct {
	Name  string
	Crons []*Cron
	// Jitter spreads entries: each runs up to Jitter after it is due, at
	// an offset fixed by its Name, so that 50 entries due at 02:00 do not
	// all start in the same second, and each starts at the same minute
	// every night.
	Jitter time.Duration
	// Last is when it last ran (kept by the caller across restarts);
	// zero: never, and then nothing before Since is caught up.
	Last  time.Time
	Since time.Time
}

// Offset is e's jitter offset.
func (e Entry) Offset() time.Duration {
	if e.Jitter <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(e.Name))
	return time.Duration(h.Sum64() % uint64(e.Jitter))
}

// next is e's first run time after t (zero: none).
func (e Entry) next(t time.Time) time.Time {
	var best time.Time
	for _, c := range e.Crons {
		if n := c.Next(t); !n.IsZero() && (best.IsZero() || n.Before(best)) {
			best = n
		}
	}
	if best.IsZero() {
		return best
	}
	return best.Add(e.Offset())
}

// NextAfter is when e runs next as seen at now: after its Last run, or
// after now when it never ran (a time before now: it is due).
func (e Entry) NextAfter(now time.Time) time.Time {
	if e.Last.IsZero() {
		return e.next(now)
	}
	return e.next(e.Last)
}

// Fire is one run the scheduler starts.
type Fire struct {
	Entry string
	Due   time.Time // when it was due (with its jitter)
	// Missed counts the runs due during downtime that this one stands for
	// (0: it ran on time).
	Missed int
}

// Skip is a due run not started, and why.
type Skip struct {
	Entry  string
	Due    time.Time
	Reason string
}

// Scheduler fires entries when they are due.
type Scheduler struct {
	Clock Clock
	// Start starts a run (a job); it must not block for the run's length.
	Start func(ctx context.Context, f Fire)
	// Busy reports whether entry's previous run still goes; a due run is
	// then skipped, never doubled.
	Busy func(entry string) bool
	// Skipped, if set, hears of each skipped run.
	Skipped func(Skip)
	Log     *slog.Logger

	mu      sync.Mutex
	entries map[string]*Entry
	wake    chan struct{}
}

// Set replaces the entries (a configuration reload); an entry kept by name
// keeps its Last.
func (s *Scheduler) Set(es []Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.entries
	s.entries = map[string]*Entry{}
	for _, e := range es {
		e := e
		if o, ok := old[e.Name]; ok && o.Last.After(e.Last) {
			e.Last = o.Last
		}
		if e.Since.IsZero() {
			e.Since = s.Clock.Now()
		}
		s.entries[e.Name] = &e
	}
	if s.wake != nil {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Last returns when entry last ran.
func (s *Scheduler) Last(entry string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[entry]; ok {
		return e.Last
	}
	return time.Time{}
}

// Next returns entry's next run time.
func (s *Scheduler) Next(entry string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[entry]; ok {
		return e.next(from(e))
	}
	return time.Time{}
}

func from(e *Entry) time.Time {
	if e.Last.IsZero() {
		return e.Since
	}
	return e.Last
}

// Tick fires (through Start) or skips every entry due at now, and returns
// when the next one is due (zero: none).
func (s *Scheduler) Tick(ctx context.Context, now time.Time) time.Time {
	s.mu.Lock()
	var fires []Fire
	var skips []Skip
	var soonest time.Time
	names := make([]string, 0, len(s.entries))
	for n := range s.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var back []string
	for _, n := range names {
		e := s.entries[n]
		// A last run after now: the clock was set back (after running
		// ahead). Counting from it would stop the entry until the clock
		// catches up, silently; count from now instead.
		if e.Last.After(now.Add(time.Minute)) {
			back = append(back, fmt.Sprintf("%s (last run %s)", n, e.Last.Format(time.RFC3339)))
			e.Last = now
		}
		due := e.next(from(e))
		if !due.IsZero() && !due.After(now) {
			// Due, maybe several times over during downtime: one run.
			missed := 0
			for nx := e.next(due); !nx.IsZero() && !nx.After(now) && missed < 1000; nx = e.next(nx) {
				missed++
			}
			if s.Busy != nil && s.Busy(n) {
				skips = append(skips, Skip{Entry: n, Due: due, Reason: "its previous run still goes"})
			} else {
				fires = append(fires, Fire{Entry: n, Due: due, Missed: missed})
			}
			e.Last = now
			due = e.next(now)
		}
		if !due.IsZero() && (soonest.IsZero() || due.Before(soonest)) {
			soonest = due
		}
	}
	s.mu.Unlock()
	if len(back) > 0 {
		s.log().Warn("the clock is before runs already made: it was set back; schedules count from now", "now", now, "entries", strings.Join(back, ", "))
	}
	for _, sk := range skips {
		s.log().Warn("scheduled run skipped", "entry", sk.Entry, "due", sk.Due, "reason", sk.Reason)
		if s.Skipped != nil {
			s.Skipped(sk)
		}
	}
	for _, f := range fires {
		if f.Missed > 0 {
			s.log().Info("catching up a run missed while down", "entry", f.Entry, "due", f.Due, "missed", f.Missed)
		}
		s.Start(ctx, f)
	}
	return soonest
}

func (s *Scheduler) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.New(slog.DiscardHandler)
}

// maxWait is the longest Run sleeps between looks at the clock: timers
// count elapsed time, so a wall clock set forward (or NTP correcting a
// clock that was behind) is noticed within it, not when the timer set
// before the jump ends.
const maxWait = time.Minute

// Run ticks whenever an entry is due, until ctx is done.
func (s *Scheduler) Run(ctx context.Context) {
	s.mu.Lock()
	s.wake = make(chan struct{}, 1)
	s.mu.Unlock()
	for {
		next := s.Tick(ctx, s.Clock.Now())
		wait := maxWait
		if !next.IsZero() {
			wait = min(next.Sub(s.Clock.Now()), maxWait)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-s.Clock.After(max(wait, 0)):
		}
	}
}
