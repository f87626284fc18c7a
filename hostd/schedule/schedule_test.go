package schedule

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustCron(t *testing.T, expr, tz string) *Cron {
	t.Helper()
	c, err := ParseCron(expr, tz)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseCronErrors(t *testing.T) {
	for expr, want := range map[string]string{
		"0 2 * *":        "want 5 fields",
		"60 2 * * *":     "minute",
		"0 24 * * *":     "hour",
		"0 2 0 * *":      "day of month",
		"0 2 * 13 *":     "month",
		"0 2 * * 8":      "day of week",
		"0 5-2 * * *":    "backwards",
		"*/0 * * * *":    "step",
		"0 2 * * funday": "day of week",
		"@fortnightly":   "want 5 fields",
	} {
		if _, err := ParseCron(expr, "UTC"); !errors.Is(err, ErrCron) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error naming %s", expr, err, want)
		}
	}
	if _, err := ParseCron("@daily", "Mars/Olympus"); !errors.Is(err, ErrCron) || !strings.Contains(err.Error(), "Mars/Olympus") {
		t.Errorf("bad zone: %v", err)
	}
}

func TestNext(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse("2006-01-02 15:04 MST", s+" UTC")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := []struct{ expr, from, want string }{
		{"0 2 * * *", "2026-12-01 01:59", "2026-12-01 02:00"},
		{"0 2 * * *", "2026-12-01 02:00", "2026-12-02 02:00"},
		{"*/15 * * * *", "2026-12-01 10:01", "2026-12-01 10:15"},
		{"30 3 * * mon-fri", "2026-12-04 04:00", "2026-12-07 03:30"}, // Friday -> Monday
		{"0 0 * * 7", "2026-12-01 00:00", "2026-12-06 00:00"},        // 7 is Sunday
		{"0 0 13 * fri", "2026-12-01 00:00", "2026-12-04 00:00"},     // either: the 4th is a Friday
		{"0 12 29 feb *", "2026-03-01 00:00", "2028-02-29 12:00"},
		{"@monthly", "2026-12-15 00:00", "2027-01-01 00:00"},
		{"0 1-5/2 * jan,dec *", "2026-12-31 06:00", "2027-01-01 01:00"},
	}
	for _, c := range cases {
		if got := mustCron(t, c.expr, "UTC").Next(utc(c.from)); !got.Equal(utc(c.want)) {
			t.Errorf("%s after %s: %v, want %s", c.expr, c.from, got, c.want)
		}
	}
	if got := mustCron(t, "0 0 31 2 *", "UTC").Next(utc("2026-01-01 00:00")); !got.IsZero() {
		t.Errorf("31 February: %v", got)
	}
}

// TestNextDST: in Europe/Berlin a 02:30 job does not run on the spring
// night that has no 02:30, and runs once on the autumn night that has two.
func TestNextDST(t *testing.T) {
	c := mustCron(t, "30 2 * * *", "Europe/Berlin")
	berlin, _ := time.LoadLocation("Europe/Berlin")
	spring := c.Next(time.Date(2026, 3, 28, 12, 0, 0, 0, berlin))
	if spring.Day() != 30 || spring.Hour() != 2 || spring.Minute() != 30 {
		t.Errorf("spring forward: %v, want 30 March 02:30", spring)
	}
	first := c.Next(time.Date(2026, 10, 24, 12, 0, 0, 0, berlin))
	second := c.Next(first)
	if first.Day() != 25 || first.Hour() != 2 || second.Day() != 26 {
		t.Errorf("fall back: %v then %v, want 25 October 02:30 once", first, second)
	}
	hourly := mustCron(t, "0 * * * *", "Europe/Berlin")
	n := 0
	for at := time.Date(2026, 10, 25, 0, 30, 0, 0, berlin); at.Before(time.Date(2026, 10, 25, 4, 0, 0, 0, berlin)); at = hourly.Next(at) {
		n++
	}
	if n != 5 { // 00:30 start, then 01:00, 02:00 CEST, 02:00 CET, 03:00
		t.Errorf("hourly over the autumn night: %d runs, want 5 (every real hour)", n)
	}
}

// fakeClock is a clock tests move by hand; After fires when it is moved
// past the deadline.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	waits   []time.Duration // every wait asked for
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	f.waiters = append(f.waiters, waiter{f.now.Add(d), ch})
	f.waits = append(f.waits, d)
	return ch
}

// awaitSleeper returns once something waits on the clock.
func (f *fakeClock) awaitSleeper(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		f.mu.Lock()
		n := len(f.waiters)
		f.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Run does not wait on the clock")
		}
	}
}

func (f *fakeClock) set(t time.Time) {
	f.mu.Lock()
	f.now = t
	rest := f.waiters[:0]
	for _, w := range f.waiters {
		if !w.at.After(t) {
			w.ch <- t
		} else {
			rest = append(rest, w)
		}
	}
	f.waiters = rest
	f.mu.Unlock()
}

// TestRun: Run sleeps on the clock until the next due time and fires then,
// once per minute of a minutely entry, and stops with its context.
func TestRun(t *testing.T) {
	clk, fires, stop := runOne(t, "* * * * *")
	for i := 1; i <= 3; i++ {
		want := time.Date(2026, 12, 1, 10, i, 0, 0, time.UTC)
		// Wait until Run sleeps, then move the clock to the due time.
		clk.awaitSleeper(t)
		clk.set(want)
		select {
		case f := <-fires:
			if !f.Due.Equal(want) {
				t.Fatalf("fire %d due %v, want %v", i, f.Due, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no fire at %v", want)
		}
	}
	stop()
}

// runOne runs a scheduler of one entry on cron spec, on a fake clock at
// 2026-12-01 10:00:30, until stop (which returns once Run has).
func runOne(t *testing.T, spec string) (clk *fakeClock, fires chan Fire, stop func()) {
	clk = &fakeClock{now: time.Date(2026, 12, 1, 10, 0, 30, 0, time.UTC)}
	fires = make(chan Fire, 10)
	s := &Scheduler{Clock: clk, Start: func(_ context.Context, f Fire) { fires <- f }}
	s.Set([]Entry{{Name: "e", Crons: []*Cron{mustCron(t, spec, "UTC")}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	return clk, fires, func() { cancel(); <-done }
}

// TestRunClockSetForward: the wall clock set forward an hour while Run
// sleeps until an entry due in an hour: Run looks at the clock again
// within a minute (its timer counts elapsed time, which the jump does not
// move) and fires the entry then, not an hour late.
func TestRunClockSetForward(t *testing.T) {
	clk, fires, stop := runOne(t, "0 * * * *")
	defer stop()
	clk.awaitSleeper(t)
	clk.mu.Lock()
	wait := clk.waits[0]
	clk.mu.Unlock()
	if wait > time.Minute {
		t.Fatalf("Run sleeps %v before looking at the clock again: a clock set forward is noticed that late", wait)
	}
	clk.set(time.Date(2026, 12, 1, 11, 0, 5, 0, time.UTC)) // the jump; the short timer fires
	select {
	case f := <-fires:
		if want := time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC); !f.Due.Equal(want) {
			t.Fatalf("fired for %v, want %v", f.Due, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the entry due at 11:00 did not fire after the clock was set forward past it")
	}
}

// TestSchedulerWeek: a week on a fake clock: a nightly
// entry fires once a night, a run still going when the next is due is
// skipped with the reason, never doubled, and 50 entries due at 02:00 are
// spread over the jitter window at offsets that stay the same each night.
func TestSchedulerWeek(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	clk := &fakeClock{now: start}
	var fired []Fire
	busy := map[string]bool{}
	var skipped []Skip
	s := &Scheduler{Clock: clk, Start: func(_ context.Context, f Fire) { fired = append(fired, f) },
		Busy: func(n string) bool { return busy[n] }, Skipped: func(sk Skip) { skipped = append(skipped, sk) }}
	nightly := mustCron(t, "0 2 * * *", "UTC")
	var es []Entry
	for i := 0; i < 50; i++ {
		es = append(es, Entry{Name: fmt.Sprintf("vm%02d", i), Crons: []*Cron{nightly}, Jitter: 30 * time.Minute})
	}
	es = append(es, Entry{Name: "slow", Crons: []*Cron{mustCron(t, "0 * * * *", "UTC")}})
	s.Set(es)
	ctx := context.Background()
	// Time moves as Run moves it: from one due time to the next.
	for now := start; now.Before(start.AddDate(0, 0, 7)); {
		clk.set(now)
		busy["slow"] = now.Hour()%2 == 1 // its run takes two hours
		next := s.Tick(ctx, now)
		if !next.After(now) {
			t.Fatalf("Tick at %v says the next run is due at %v", now, next)
		}
		now = next
	}
	perEntry := map[string][]Fire{}
	for _, f := range fired {
		perEntry[f.Entry] = append(perEntry[f.Entry], f)
	}
	offsets := map[time.Duration]bool{}
	for i := 0; i < 50; i++ {
		n := fmt.Sprintf("vm%02d", i)
		fs := perEntry[n]
		if len(fs) != 7 {
			t.Fatalf("%s fired %d times in a week, want 7", n, len(fs))
		}
		off := fs[0].Due.Sub(time.Date(2026, 11, 30, 2, 0, 0, 0, time.UTC))
		for d, f := range fs {
			want := time.Date(2026, 11, 30+d, 2, 0, 0, 0, time.UTC).Add(off)
			if !f.Due.Equal(want) || off < 0 || off >= 30*time.Minute || f.Missed != 0 {
				t.Fatalf("%s night %d: due %v, want %v (offset %v)", n, d, f.Due, want, off)
			}
		}
		offsets[off.Truncate(time.Minute)] = true
	}
	if len(offsets) < 15 {
		t.Errorf("50 entries started in only %d distinct minutes of the 30-minute window", len(offsets))
	}
	// Added at 00:00, it first runs at 01:00 — busy — then every other hour.
	if got := len(perEntry["slow"]); got != 7*12-1 {
		t.Errorf("slow fired %d times, want %d (every other hour)", got, 7*12-1)
	}
	if len(skipped) != 7*12 || skipped[0].Reason != "its previous run still goes" {
		t.Errorf("%d skips (%+v), want %d with the reason", len(skipped), skipped[:min(len(skipped), 1)], 7*12)
	}
}

// TestSchedulerCatchUp: after three days down, a nightly entry runs once,
// saying how many runs it stands for, then on schedule again; an entry
// that never ran catches up nothing from before it was added.
func TestSchedulerCatchUp(t *testing.T) {
	clk := &fakeClock{now: time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)}
	var fired []Fire
	s := &Scheduler{Clock: clk, Start: func(_ context.Context, f Fire) { fired = append(fired, f) }}
	nightly := mustCron(t, "0 2 * * *", "UTC")
	s.Set([]Entry{
		{Name: "web", Crons: []*Cron{nightly}, Last: time.Date(2026, 12, 1, 2, 0, 0, 0, time.UTC)},
		{Name: "new", Crons: []*Cron{nightly}},
	})
	next := s.Tick(context.Background(), clk.Now())
	if len(fired) != 1 || fired[0].Entry != "web" || fired[0].Missed != 2 || !fired[0].Due.Equal(time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)) {
		t.Fatalf("catch-up: %+v", fired)
	}
	if want := time.Date(2026, 12, 5, 2, 0, 0, 0, time.UTC); !next.Equal(want) || !s.Next("web").Equal(want) || !s.Next("new").Equal(want) {
		t.Fatalf("next %v (web %v, new %v), want %v", next, s.Next("web"), s.Next("new"), want)
	}
	s.Tick(context.Background(), clk.Now().Add(time.Hour))
	if len(fired) != 1 {
		t.Fatalf("the catch-up was repeated: %+v", fired)
	}
	// A reload keeps what ran.
	s.Set([]Entry{{Name: "web", Crons: []*Cron{nightly}}})
	if !s.Last("web").Equal(clk.Now()) {
		t.Fatalf("reload lost the last run: %v", s.Last("web"))
	}
}

// FuzzCron: any expression parses or is refused, and Next never hangs and
// moves forward.
func FuzzCron(f *testing.F) {
	for _, s := range []string{"0 2 * * *", "*/15 1-5 * jan-mar mon,fri", "@weekly", "0 0 31 2 *", "59 23 29 2 *", "0 0 * * 7", "1-60/0 * * * *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCron(s, "Europe/Berlin")
		if err != nil {
			return
		}
		from := time.Date(2026, 3, 29, 1, 30, 0, 0, time.UTC)
		for i := 0; i < 3; i++ {
			n := c.Next(from)
			if n.IsZero() {
				return
			}
			if !n.After(from) {
				t.Fatalf("%q: next after %s is %s", s, from, n)
			}
			from = n
		}
	})
}

// TestSchedulerClockSetBack: a clock that ran a year ahead (a run was
// recorded then) and is set back does not stop the entry until the clock
// catches up: its next run is the next one after now.
func TestSchedulerClockSetBack(t *testing.T) {
	now := time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)
	clk := &fakeClock{now: now}
	var fired []Fire
	s := &Scheduler{Clock: clk, Start: func(_ context.Context, f Fire) { fired = append(fired, f) }}
	nightly := mustCron(t, "0 2 * * *", "UTC")
	s.Set([]Entry{{Name: "web", Crons: []*Cron{nightly}, Last: now.AddDate(1, 0, 0)}})
	next := s.Tick(context.Background(), now)
	if want := time.Date(2026, 12, 5, 2, 0, 0, 0, time.UTC); !next.Equal(want) {
		t.Fatalf("next run after the clock was set back: %v, want %v", next, want)
	}
	s.Tick(context.Background(), time.Date(2026, 12, 5, 2, 0, 1, 0, time.UTC))
	if len(fired) != 1 {
		t.Fatalf("runs after the clock was set back: %+v", fired)
	}
}
