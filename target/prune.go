package target

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

func jsonUnmarshal(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return corrupt("%v", err)
	}
	return nil
}

// ErrProtected is returned for attempts to delete a protected point.
var ErrProtected = errors.New("point is protected")

// Protect marks point id protected (on) or not: prune never removes a
// protected point.
func (r *Repository) Protect(ctx context.Context, id string, on bool) error {
	if _, err := r.Point(ctx, id); err != nil {
		return err
	}
	if on {
		return r.b.Put(ctx, "protect/"+id, []byte(r.now().UTC().Format(time.RFC3339)))
	}
	return r.b.Delete(ctx, "protect/"+id)
}

// Protected returns the set of protected point IDs.
func (r *Repository) Protected(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	err := r.b.List(ctx, "protect/", func(fi ObjectInfo) error {
		out[strings.TrimPrefix(fi.Key, "protect/")] = true
		return nil
	})
	return out, err
}

// DeletePoint removes one point (not its chunks: GC does). It takes the
// exclusive lock and refuses protected points.
func (r *Repository) DeletePoint(ctx context.Context, id string) error {
	if err := checkPointID(id); err != nil {
		return err
	}
	lock, err := r.Lock(ctx, true)
	if err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	defer lock.Unlock(ctx)
	prot, err := r.Protected(ctx)
	if err != nil {
		return err
	}
	if prot[id] {
		return fmt.Errorf("delete %s: %w", id, ErrProtected)
	}
	held, err := r.holds(ctx, lock)
	if err != nil {
		return err
	}
	if why, ok := held[id]; ok {
		return fmt.Errorf("delete %s: %w: %s", id, ErrHeld, why)
	}
	if _, err := r.b.Stat(ctx, "points/"+id); errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete %s: %w", id, ErrNoPoint)
	}
	return r.deletePoint(ctx, r.guardedDelete(lock, false), id)
}

// deletePoint removes the journal entry first: an interruption leaves an
// unjournaled manifest (harmless), never a journal entry that cries damage.
// The lock is confirmed before: a point may only go while nothing could
// have started to rely on it since the decision.
func (r *Repository) deletePoint(ctx context.Context, del *deleter, id string) error {
	if err := del.check(ctx); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	if err := del.delete(ctx, "journal/"+id); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	if err := del.delete(ctx, "points/"+id); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	return r.b.Sync(ctx)
}

// Retention says which points to keep, per domain. A point is kept if any
// rule keeps it; protected points are always kept, and so are those the
// next backup of the domain builds on (see chainBases).
type Retention struct {
	KeepLast    int `json:"keep_last,omitempty"`
	KeepHourly  int `json:"keep_hourly,omitempty"`
	KeepDaily   int `json:"keep_daily,omitempty"`
	KeepWeekly  int `json:"keep_weekly,omitempty"`
	KeepMonthly int `json:"keep_monthly,omitempty"`
	KeepYearly  int `json:"keep_yearly,omitempty"`
	// KeepWithin keeps the points taken within this long before the
	// domain's newest point (or now, if that is earlier).
	KeepWithin time.Duration `json:"keep_within,omitempty"`
}

// Empty reports whether no rule is set.
func (p Retention) Empty() bool { return p == Retention{} }

// Decision is what retention decided for one point.
type Decision struct {
	ID         string    `json:"id"`
	Domain     string    `json:"domain"`
	DomainUUID string    `json:"domain_uuid,omitempty"`
	Host       string    `json:"host,omitempty"`
	Time       time.Time `json:"time"`
	Keep       bool      `json:"keep"`
	Reasons    []string  `json:"reasons,omitempty"` // why it is kept
}

// ClockSlack is how far ahead of the clock a point may be dated and still
// count as taken (hosts' clocks differ by seconds under NTP).
const ClockSlack = time.Minute

// Future reports whether m is dated after now: taken while the clock
// was set ahead (a year, say) and set right since. Such a point is no
// base for the next backup and retention keeps it without counting it:
// its date says nothing of its place among the points taken since.
func (m *Manifest) Future(now time.Time) bool { return future(m.Time, now) }

// future reports whether t is ahead of now by more than ClockSlack.
func future(t, now time.Time) bool { return t.After(now.Add(ClockSlack)) }

// ChainKey is what retention groups a point's domain by, as chains are:
// its UUID, or (points written without one) its name. Two hosts' VMs of
// one name are two domains; a VM renamed or moved to another host is one.
func (m *Manifest) ChainKey() string { return ChainKey(m.DomainUUID, m.Domain) }

// ChainKey is the ChainKey of a domain of that UUID and name.
func ChainKey(uuid, name string) string {
	if uuid != "" {
		return uuid
	}
	return "name:" + name
}

// groupByDomain groups points by ChainKey, each group newest first, the
// groups in key order.
func groupByDomain(points []*Manifest) [][]*Manifest {
	by := map[string][]*Manifest{}
	for _, m := range points {
		by[m.ChainKey()] = append(by[m.ChainKey()], m)
	}
	var out [][]*Manifest
	for _, k := range slices.Sorted(maps.Keys(by)) {
		ms := by[k]
		sort.Slice(ms, func(i, j int) bool {
			return ms[i].Time.After(ms[j].Time) || ms[i].Time.Equal(ms[j].Time) && ms[i].ID > ms[j].ID
		})
		out = append(out, ms)
	}
	return out
}

// Decide applies p to points (any order, any domains) at time now. The
// result is grouped by domain (ChainKey), newest first within each.
func Decide(points []*Manifest, p Retention, protected map[string]bool, now time.Time) []Decision {
	var out []Decision
	for _, ms := range groupByDomain(points) {
		type bucket struct {
			name  string
			n     int
			key   func(time.Time) string
			last  string
			count int
		}
		buckets := []*bucket{
			{name: "hourly", n: p.KeepHourly, key: func(t time.Time) string { return t.Format("2006-01-02T15") }},
			{name: "daily", n: p.KeepDaily, key: func(t time.Time) string { return t.Format("2006-01-02") }},
			{name: "weekly", n: p.KeepWeekly, key: func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
			{name: "monthly", n: p.KeepMonthly, key: func(t time.Time) string { return t.Format("2006-01") }},
			{name: "yearly", n: p.KeepYearly, key: func(t time.Time) string { return t.Format("2006") }},
		}
		// Points dated in the future are kept and not counted: the rules
		// apply to the others (the newest of which is the chain base).
		for len(ms) > 0 && ms[0].Future(now) {
			m := ms[0]
			out = append(out, Decision{ID: m.ID, Domain: m.Domain, DomainUUID: m.DomainUUID, Host: m.Host, Time: m.Time, Keep: true,
				Reasons: []string{"dated in the future (the clock was ahead when it was taken)"}})
			ms = ms[1:]
		}
		if len(ms) == 0 {
			continue
		}
		base := chainBases(ms)
		// keep_within counts back from the newest point, not from the
		// clock: a clock set ahead must not age every point out at once.
		ref := now
		if ms[0].Time.Before(now) {
			ref = ms[0].Time
		}
		for i, m := range ms {
			t := m.Time.UTC()
			dec := Decision{ID: m.ID, Domain: m.Domain, DomainUUID: m.DomainUUID, Host: m.Host, Time: m.Time}
			if protected[m.ID] {
				dec.Reasons = append(dec.Reasons, "protected")
			}
			if r := base[m.ID]; r != "" {
				dec.Reasons = append(dec.Reasons, r)
			}
			if i < p.KeepLast {
				dec.Reasons = append(dec.Reasons, "last")
			}
			if p.KeepWithin > 0 && ref.Sub(t) <= p.KeepWithin {
				dec.Reasons = append(dec.Reasons, "within "+p.KeepWithin.String())
			}
			for _, b := range buckets {
				if b.count < b.n {
					if k := b.key(t); k != b.last {
						b.last = k
						b.count++
						dec.Reasons = append(dec.Reasons, b.name)
					}
				}
			}
			dec.Keep = len(dec.Reasons) > 0
			out = append(out, dec)
		}
	}
	return out
}

// chainBases names the points of one domain (newest first) that the next
// backup builds on, whatever the rules say: the newest (an incremental's
// base) and, when that is a differential, the full it is based on.
// Removing them would make the next backup read every disk in full.
func chainBases(ms []*Manifest) map[string]string {
	out := map[string]string{}
	if len(ms) == 0 {
		return out
	}
	out[ms[0].ID] = "chain base"
	if ms[0].Level == LevelDiff {
		for _, m := range ms {
			if m.Level == LevelFull {
				out[m.ID] = "chain base (differential)"
				break
			}
		}
	}
	return out
}

// Check refuses a retention that would remove every point or makes no sense.
func (p Retention) Check() error {
	if p.Empty() {
		return errors.New("prune: no retention rule given (keep-last, keep-daily, ...): refusing to remove everything")
	}
	if min(p.KeepLast, p.KeepHourly, p.KeepDaily, p.KeepWeekly, p.KeepMonthly, p.KeepYearly) < 0 || p.KeepWithin < 0 {
		return errors.New("prune: retention counts must not be negative")
	}
	return nil
}

// Prune applies p to the points of domain ("" for all; a name or a UUID)
// that any host wrote and, unless dryRun, deletes the points it does not
// keep. It takes the exclusive lock. It returns every decision; GC
// reclaims the space afterwards.
func (r *Repository) Prune(ctx context.Context, domain string, p Retention, dryRun bool) ([]Decision, error) {
	if err := p.Check(); err != nil {
		return nil, err
	}
	return r.PruneBy(ctx, func(newest *Manifest) *Retention {
		if domain == "" || newest.Domain == domain || newest.DomainUUID == domain {
			return &p
		}
		return nil
	}, PruneScope{}, dryRun)
}

// Identity is who wrote a point: a host name and the machine's ID (two
// machines may share a name; points written before 2026-12 have no ID).
type Identity struct {
	Host, MachineID string
}

// wrote reports whether m was written by id: its host name, and its
// machine when both record one.
func (id Identity) wrote(m *Manifest) bool {
	return m.Host == id.Host && (m.MachineID == "" || id.MachineID == "" || m.MachineID == id.MachineID)
}

// PruneScope limits which points a prune looks at. The zero scope is
// every host's points.
type PruneScope struct {
	// Self, when set, is this host: it prunes the points it wrote (another
	// machine of the same host name keeps its points) and those of Hosts.
	Self *Identity
	// Hosts are the host names, every machine of each, whose points are
	// pruned; without Self, when set, only theirs.
	Hosts []string
}

func (s PruneScope) has(m *Manifest) bool {
	if s.Self == nil && len(s.Hosts) == 0 {
		return true
	}
	return s.Self != nil && s.Self.wrote(m) || slices.Contains(s.Hosts, m.Host)
}

// PruneBy is Prune with each domain's own retention: the points in scope
// are grouped by domain (ChainKey), and rules, given the newest point of
// a group, returns its retention, or nil for a domain whose points all
// stay (and are left out of the result). Every retention rules gives must
// pass Check.
func (r *Repository) PruneBy(ctx context.Context, rules func(newest *Manifest) *Retention, scope PruneScope, dryRun bool) ([]Decision, error) {
	var lock *Lock
	if !dryRun {
		var err error
		if lock, err = r.Lock(ctx, true); err != nil {
			return nil, fmt.Errorf("prune: %w", err)
		}
		defer lock.Unlock(ctx)
	}
	// A manifest that cannot be read could be the newest point of a
	// domain: deciding without it would remove points the rules keep.
	var unreadable error
	all, err := r.Points(ctx, func(id string, err error) {
		if errors.Is(err, ErrStray) {
			r.log.Warn("prune: ignoring an object that is no point", "err", err)
		} else if unreadable == nil {
			unreadable = fmt.Errorf("prune: point %s unreadable, nothing removed: %w", id, err)
		}
	})
	if err != nil {
		return nil, err
	}
	if unreadable != nil {
		return nil, unreadable
	}
	all = slices.DeleteFunc(all, func(m *Manifest) bool { return !scope.has(m) })
	prot, err := r.Protected(ctx)
	if err != nil {
		return nil, err
	}
	held, err := r.holds(ctx, lock)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	var decs []Decision
	for _, ms := range groupByDomain(all) {
		p := rules(ms[0])
		if p == nil {
			continue
		}
		if err := p.Check(); err != nil {
			return nil, fmt.Errorf("domain %s: %w", ms[0].Domain, err)
		}
		decs = append(decs, Decide(ms, *p, prot, r.now())...)
	}
	for i := range decs {
		if why, ok := held[decs[i].ID]; ok {
			decs[i].Keep, decs[i].Reasons = true, append(decs[i].Reasons, why)
		}
	}
	if dryRun {
		return decs, nil
	}
	del := r.guardedDelete(lock, false)
	for _, d := range decs {
		if !d.Keep {
			if err := r.deletePoint(ctx, del, d.ID); err != nil {
				return decs, err
			}
			r.log.Info("pruned point", "point", d.ID, "domain", d.Domain)
		}
	}
	return decs, nil
}
