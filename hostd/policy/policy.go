// Package policy holds what an operator wrote down once about which
// domains are backed up when, how and where, and how long points are kept:
// the typed policies cmd/internal/config reads, which domains each one
// selects, and which level each run takes (the level plan).
package policy

import (
	"fmt"
	"path"
	"slices"
	"time"

	"github.com/virtkeep/virtkeep/hostd/schedule"
	"github.com/virtkeep/virtkeep/target"
)

// MetadataNS is the namespace of the element of a domain's <metadata>
// that opts it into policies: <virtkeep:policy xmlns:virtkeep="...">NAME</virtkeep:policy>.
const MetadataNS = "https://virtkeep.org/xmlns/policy/1"

// Policy is one policies: entry.
type Policy struct {
	Name string
	// Domains are names or shell globs ("*": every domain).
	Domains []string
	// OptIn selects, besides Domains, the domains whose metadata names
	// this policy.
	OptIn     bool
	Schedules []*schedule.Cron
	// Jitter spreads the domains' and the runs' start times.
	Jitter time.Duration
	// Level is the level of a run the plan does not make a full: auto
	// (default), inc or diff; full makes every run a full.
	Level string
	Full  Full
	// Consistency is crash, fs or app; RequireConsistency fails a backup
	// that cannot reach it instead of falling back.
	Consistency        string
	RequireConsistency bool
	FreezeTimeout      time.Duration
	Disks, Exclude     []string
	PreFreeze          []Hook
	PostThaw           []Hook
	// Targets receive a backup each; CopyTo receive a copy of the first
	// target's point.
	Targets, CopyTo []string
	// Retention is per target name (of Targets and CopyTo); a target with
	// none keeps every point.
	Retention map[string]target.Retention
	// Concurrency is how many of the policy's domains are backed up at
	// once (default 1).
	Concurrency int
}

// Hook is a command run in the guest (consistency app): before the
// freeze, or after the thaw.
type Hook struct {
	Path    string
	Args    []string
	Timeout time.Duration // default 30 s
}

// Full says when a run takes a full backup instead of Level.
type Full struct {
	// Period is "week" (the first run of each ISO week) or "month".
	Period string
	// Every takes a full when the last is at least this old.
	Every time.Duration
	// Location is the time zone weeks and months are counted in.
	Location *time.Location
}

func (f Full) String() string {
	switch {
	case f.Period != "":
		return "first run of the " + f.Period
	case f.Every > 0:
		return "every " + FormatDuration(f.Every)
	}
	return "never"
}

// Selects reports whether the policy selects domain name; optedIn says
// whether the domain's metadata names the policy.
func (p *Policy) Selects(name string, optedIn bool) bool {
	if p.OptIn && optedIn {
		return true
	}
	for _, g := range p.Domains {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// LevelAt is the level of a run at now for a domain whose last full in the
// target was taken at lastFull (zero: none, or pruned).
// The reason says why a full was chosen.
func (p *Policy) LevelAt(now, lastFull time.Time) (level, reason string) {
	if p.Level == target.LevelFull {
		return target.LevelFull, "the policy's level is full"
	}
	lv := p.Level
	if lv == "" {
		lv = "auto"
	}
	if lastFull.IsZero() {
		if p.Full.Period != "" || p.Full.Every > 0 {
			// None kept (or none yet, when the backup is a full anyway).
			return target.LevelFull, "no full backup in the target"
		}
		return lv, ""
	}
	loc := p.Full.Location
	if loc == nil {
		loc = time.Local
	}
	n, l := now.In(loc), lastFull.In(loc)
	switch {
	case p.Full.Period == "week":
		ny, nw := n.ISOWeek()
		ly, lw := l.ISOWeek()
		if ny != ly || nw != lw {
			return target.LevelFull, "first run of the week"
		}
	case p.Full.Period == "month":
		if n.Year() != l.Year() || n.Month() != l.Month() {
			return target.LevelFull, "first run of the month"
		}
	case p.Full.Every > 0:
		if now.Sub(lastFull) >= p.Full.Every {
			return target.LevelFull, "last full is " + FormatDuration(now.Sub(lastFull).Round(time.Minute)) + " old"
		}
	}
	return lv, ""
}

// Overlap names a domain two policies select.
type Overlap struct{ Domain, A, B string }

func (o Overlap) Error() string {
	return fmt.Sprintf("domain %s is in two policies, %s and %s: a domain may be in one", o.Domain, o.A, o.B)
}

// Assign gives each domain its policy. optedIn says which policies a
// domain's metadata names. A domain two policies select gets none, and
// an Overlap each.
func Assign(ps []*Policy, domains []string, optedIn func(domain string) []string) (map[string]*Policy, []Overlap) {
	out := map[string]*Policy{}
	var bad []Overlap
	for _, d := range domains {
		var opts []string
		if optedIn != nil {
			opts = optedIn(d)
		}
		var got *Policy
		for _, p := range ps {
			if !p.Selects(d, slices.Contains(opts, p.Name)) {
				continue
			}
			if got != nil {
				bad = append(bad, Overlap{Domain: d, A: got.Name, B: p.Name})
				continue
			}
			got = p
		}
		if got != nil && !slices.ContainsFunc(bad, func(o Overlap) bool { return o.Domain == d }) {
			out[d] = got
		}
	}
	return out, bad
}

// ParseDuration is time.ParseDuration with days (d) and weeks (w) too:
// "7d", "2w", "36h", "1d12h".
func ParseDuration(s string) (time.Duration, error) {
	var total time.Duration
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9') {
			i++
		}
		if i == 0 || i == len(rest) {
			break
		}
		unit := map[byte]time.Duration{'d': 24 * time.Hour, 'w': 7 * 24 * time.Hour}[rest[i]]
		if unit == 0 {
			break
		}
		var n int64
		if _, err := fmt.Sscan(rest[:i], &n); err != nil || n > 100000 {
			return 0, fmt.Errorf("duration %q: %d%c is too long", s, n, rest[i])
		}
		total += time.Duration(n) * unit
		rest = rest[i+1:]
	}
	if rest == "" {
		if s == "" {
			return 0, fmt.Errorf("duration %q: empty", s)
		}
		return total, nil
	}
	d, err := time.ParseDuration(rest)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want a number and a unit (s, m, h, d, w), such as 7d or 36h", s)
	}
	return total + d, nil
}

// FormatDuration writes d with days where it has whole ones: "7d", "1d12h0m0s".
func FormatDuration(d time.Duration) string {
	day := 24 * time.Hour
	if d >= day {
		if d%day == 0 {
			return fmt.Sprintf("%dd", d/day)
		}
		return fmt.Sprintf("%dd%s", d/day, d%day)
	}
	return d.String()
}
