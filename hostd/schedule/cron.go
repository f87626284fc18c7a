// Package schedule turns schedules into run times: cron expressions (five
// fields, names, ranges, steps, @daily and the like) in a time zone, and a
// scheduler that, on an injected clock, fires each entry once when it is
// due, catches up a run missed during downtime once (not in a burst), skips
// a run while the previous one still goes (with the reason), and spreads
// entries over a jitter window. It knows nothing of what a run does: the
// daemon gives it the policies' runs and each target's GC and verify.
package schedule

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// ErrCron is wrapped by every error about a cron expression.
var ErrCron = errors.New("bad cron expression")

// Cron is a parsed cron expression in a time zone.
type Cron struct {
	src                           string
	minute, hour, dom, month, dow uint64 // bit sets
	domAny, dowAny, hourAny       bool
	loc                           *time.Location
}

func (c *Cron) String() string { return c.src }

var macros = map[string]string{
	"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
	"@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}

var monthNames = map[string]int{"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12}
var dowNames = map[string]int{"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

// ParseCron parses "MIN HOUR DOM MONTH DOW" (or a macro such as @daily) in
// time zone tz ("" or "Local": the host's; else an IANA name). As in Vixie
// cron, when both day of month and day of week are restricted a day
// matching either is a match; 7 is Sunday too.
func ParseCron(expr, tz string) (*Cron, error) {
	loc := time.Local
	if tz != "" && tz != "Local" {
		l, err := time.LoadLocation(tz)
		if err != nil {
			return nil, fmt.Errorf("%w: time zone %q: %v", ErrCron, tz, err)
		}
		loc = l
	}
	src := strings.TrimSpace(expr)
	s := src
	if m, ok := macros[strings.ToLower(s)]; ok {
		s = m
	}
	f := strings.Fields(s)
	if len(f) != 5 {
		return nil, fmt.Errorf("%w: %q: want 5 fields (minute hour day-of-month month day-of-week) or a macro (@hourly, @daily, @weekly, @monthly, @yearly)", ErrCron, src)
	}
	c := &Cron{src: src, loc: loc}
	var err error
	parts := []struct {
		name     string
		lo, hi   int
		names    map[string]int
		set      *uint64
		anyField *bool
	}{
		{"minute", 0, 59, nil, &c.minute, nil},
		{"hour", 0, 23, nil, &c.hour, &c.hourAny},
		{"day of month", 1, 31, nil, &c.dom, &c.domAny},
		{"month", 1, 12, monthNames, &c.month, nil},
		{"day of week", 0, 7, dowNames, &c.dow, &c.dowAny},
	}
	for i, p := range parts {
		var all bool
		if *p.set, all, err = field(f[i], p.lo, p.hi, p.names); err != nil {
			return nil, fmt.Errorf("%w: %q: %s: %v", ErrCron, src, p.name, err)
		}
		if p.anyField != nil {
			*p.anyField = all
		}
	}
	if c.dow&(1<<7) != 0 { // 7 is Sunday
		c.dow |= 1
	}
	return c, nil
}

// field parses one field: *, N, A-B, lists, and /STEP on * or ranges.
func field(s string, lo, hi int, names map[string]int) (uint64, bool, error) {
	var set uint64
	all := s == "*" || s == "?"
	for _, part := range strings.Split(s, ",") {
		rng, stepS, hasStep := strings.Cut(part, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepS)
			if err != nil || n < 1 || n > hi {
				return 0, false, fmt.Errorf("step %q", stepS)
			}
			step = n
		}
		a, b := lo, hi
		switch {
		case rng == "*" || rng == "?":
		case strings.Contains(rng, "-"):
			x, y, _ := strings.Cut(rng, "-")
			var err error
			if a, err = value(x, lo, hi, names); err != nil {
				return 0, false, err
			}
			if b, err = value(y, lo, hi, names); err != nil {
				return 0, false, err
			}
			if a > b {
				return 0, false, fmt.Errorf("range %q runs backwards", rng)
			}
		default:
			v, err := value(rng, lo, hi, names)
			if err != nil {
				return 0, false, err
			}
			a, b = v, v
			if hasStep {
				b = hi
			}
		}
		for v := a; v <= b; v += step {
			set |= 1 << uint(v)
		}
	}
	return set, all, nil
}

func value(s string, lo, hi int, names map[string]int) (int, error) {
	if v, ok := names[strings.ToLower(s)]; ok {
		return v, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("%q: want %d-%d", s, lo, hi)
	}
	return v, nil
}

func has(set uint64, v int) bool { return set&(1<<uint(v)) != 0 }

func (c *Cron) dayMatches(t time.Time) bool {
	dom, dow := has(c.dom, t.Day()), has(c.dow, int(t.Weekday()))
	switch {
	case c.domAny && c.dowAny:
		return true
	case c.domAny:
		return dow
	case c.dowAny:
		return dom
	}
	return dom || dow
}

// Next is the first time after t the expression matches (seconds zero), in
// its time zone; the zero time when there is none within five years (31
// February).
func (c *Cron) Next(t time.Time) time.Time {
	t = t.In(c.loc).Truncate(time.Minute).Add(time.Minute)
	limit := t.AddDate(5, 0, 0)
	for t.Before(limit) {
		switch {
		case !has(c.month, int(t.Month())):
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, c.loc)
		case !c.dayMatches(t):
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, c.loc)
		case !has(c.hour, t.Hour()):
			// The next hour in wall time; over a DST change the clock may
			// skip one (no run then) or repeat one (one run).
			next := time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, c.loc)
			if repeated(next) && next.Add(-time.Hour).After(t) {
				next = next.Add(-time.Hour) // an hour shown twice: its first pass
			}
			if !next.After(t) {
				next = t.Truncate(time.Hour).Add(time.Hour)
			}
			t = next
		case !has(c.minute, t.Minute()):
			// To the next minute of the set in this hour, or the hour's end.
			step := 60 - t.Minute()
			if rest := c.minute >> uint(t.Minute()+1); rest != 0 {
				step = bits.TrailingZeros64(rest) + 1
			}
			t = t.Add(time.Duration(step) * time.Minute)
		case !c.hourAny && repeated(t):
			// The second pass of an hour the clock set back: a run at a
			// fixed hour happens once.
			t = t.Add(time.Minute)
		default:
			return t
		}
	}
	return time.Time{}
}

// repeated reports whether t's wall-clock time was also shown an hour
// earlier (the hour a DST change repeats).
func repeated(t time.Time) bool {
	p := t.Add(-time.Hour)
	return p.Hour() == t.Hour() && p.Minute() == t.Minute() && p.Day() == t.Day()
}
