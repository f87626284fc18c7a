package service

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/catalog"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/target"
)

// record is a manifest as the API shows it.
func record(m *target.Manifest, targetName string) api.Point {
	p := api.Point{ID: m.ID, Domain: m.Domain, DomainUUID: m.DomainUUID, Target: targetName, Time: m.Time.UTC(),
		Level: m.Level, Consistency: m.Consistency, FreezeMS: m.FreezeMS, Parent: m.Parent, Disks: []api.PointDisk{}}
	for _, d := range m.Disks {
		if p.Checkpoint == "" {
			p.Checkpoint = d.Checkpoint
		}
		p.Disks = append(p.Disks, api.PointDisk{Name: d.Name, Format: d.Format, VirtualSize: d.VirtualSize, BytesRead: d.BytesRead, BytesStored: d.BytesStored, Checkpoint: d.Checkpoint})
	}
	return p
}

// Points lists the catalog's points. A target the catalog has never
// compared with its repository is compared first.
func (s *Service) Points(ctx context.Context, r api.ListRequest) ([]api.Point, error) {
	ts, err := s.targets(r.Target)
	if err != nil {
		return nil, err
	}
	if r.Domain != "" {
		if err := checkDomainName("domain", r.Domain); err != nil {
			return nil, err
		}
	}
	if _, err := s.syncUnsynced(ctx, ts); err != nil {
		return nil, err
	}
	return s.cat.Points(ctx, catalog.Query{Target: r.Target, Domain: r.Domain})
}

// targets returns the named target, or all for "".
func (s *Service) targets(name string) ([]Target, error) {
	if name == "" {
		return s.targetList(), nil
	}
	t, err := s.target(name)
	return []Target{t}, err
}

// syncUnsynced reconciles the targets the catalog never compared with their
// repository, skipping (and returning) those that cannot be reached.
func (s *Service) syncUnsynced(ctx context.Context, ts []Target) ([]string, error) {
	if s.readOnly.Load() {
		return nil, nil
	}
	var unreachable []string
	for _, t := range ts {
		synced, err := s.cat.Synced(ctx, t.Name)
		if err != nil {
			return nil, err
		}
		if !synced.IsZero() {
			continue
		}
		if err := s.Reconcile(ctx, t.Name, false); err != nil {
			if api.CodeOf(err) != api.CodeUnavailable {
				return nil, err
			}
			s.log.Warn("target skipped: cannot open its repository", "target", t.Name, "err", err)
			unreachable = append(unreachable, t.Name)
		}
	}
	return unreachable, nil
}

// Reconcile compares the catalog with target's repository: one listing of
// the point IDs, then only the new manifests are read. With rebuild every
// manifest is read again and the target's points are replaced.
func (s *Service) Reconcile(ctx context.Context, name string, rebuild bool) error {
	t, err := s.target(name)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	repo, err := s.open(ctx, t, false)
	if errors.Is(err, target.ErrNotRepository) {
		// No repository yet: no points. But one the catalog knows points
		// of has not vanished, it is out of reach (an unmounted share, a
		// bucket renamed): its points stay listed.
		have, cerr := s.cat.PointIDs(ctx, t.Name)
		if cerr != nil {
			return cerr
		}
		if len(have) > 0 {
			return api.WithCode(api.CodeUnavailable, fmt.Errorf("target %s: the catalog holds %d points of it: %w", t.Name, len(have), err))
		}
		return s.cat.Sync(ctx, t.Name, nil, nil, true, time.Now())
	}
	if err != nil {
		return err
	}
	defer repo.Close()
	// One listing; the manifests come from the repository's metadata
	// cache, or many at once. An unreadable one is listed still: a point
	// the catalog has stays.
	unreadable := map[string]bool{}
	ms, err := repo.Points(ctx, func(id string, err error) {
		if !errors.Is(err, target.ErrStray) {
			unreadable[id] = true
		}
		s.log.Warn("point unreadable", "target", t.Name, "point", id, "err", err)
	})
	if err != nil {
		return api.WithCode(api.CodeUnavailable, fmt.Errorf("target %s: %w", t.Name, err))
	}
	have := map[string]bool{}
	if !rebuild {
		if have, err = s.cat.PointIDs(ctx, t.Name); err != nil {
			return err
		}
	}
	for id := range unreadable {
		delete(have, id)
	}
	var add []api.Point
	for _, m := range ms {
		if have[m.ID] {
			delete(have, m.ID)
			continue
		}
		add = append(add, record(m, t.Name))
	}
	var remove []string
	for id := range have {
		remove = append(remove, id)
	}
	if len(add)+len(remove) > 0 && !rebuild {
		s.log.Info("catalog reconciled with target", "target", t.Name, "added", len(add), "removed", len(remove))
	}
	return s.cat.Sync(ctx, t.Name, add, remove, rebuild, time.Now())
}

// ReconcileAll reconciles every target; unreachable ones are logged.
func (s *Service) ReconcileAll(ctx context.Context) {
	for _, t := range s.targetList() {
		if err := s.Reconcile(ctx, t.Name, false); err != nil {
			s.log.Warn("catalog not reconciled with target", "target", t.Name, "err", err)
		}
	}
}

// Point resolves a point.
func (s *Service) Point(ctx context.Context, r api.PointRequest) (api.Point, error) {
	return s.resolve(ctx, r.Point, r.Target)
}

// resolve finds spec: an ID, DOMAIN@latest, or DOMAIN@<RFC 3339 time> (the
// newest point at or before it), in target only (if set). A miss in the
// catalog reconciles the targets (another host may have added it) and
// looks again.
func (s *Service) resolve(ctx context.Context, spec, only string) (api.Point, error) {
	q, err := parsePoint(spec)
	if err != nil {
		return api.Point{}, err
	}
	ts, err := s.targets(only)
	if err != nil {
		return api.Point{}, err
	}
	q.Target = only
	unreachable, err := s.syncUnsynced(ctx, ts)
	if err != nil {
		return api.Point{}, err
	}
	if err := s.domainOfName(ctx, &q); err != nil {
		return api.Point{}, err
	}
	ps, err := s.latestTaken(ctx, q)
	if err != nil {
		return api.Point{}, err
	}
	if len(ps) == 0 && !s.readOnly.Load() {
		unreachable = nil
		for _, t := range ts {
			if err := s.Reconcile(ctx, t.Name, false); err != nil {
				if api.CodeOf(err) != api.CodeUnavailable {
					return api.Point{}, err
				}
				unreachable = append(unreachable, t.Name)
			}
		}
		if ps, err = s.latestTaken(ctx, q); err != nil {
			return api.Point{}, err
		}
	}
	if len(ps) == 0 {
		where := "any target"
		if only != "" {
			where = "target " + only
		} else if len(unreachable) > 0 {
			where = "any reachable target (unreachable: " + strings.Join(unreachable, ", ") + ")"
		}
		if q.ID != "" {
			return api.Point{}, api.Errorf(api.CodeNotFound, "no point %s in %s", spec, where)
		}
		dom, when, _ := strings.Cut(spec, "@")
		return api.Point{}, api.Errorf(api.CodeNotFound, "no point of domain %q at or before %s in %s", dom, when, where)
	}
	return ps[len(ps)-1], nil
}

// latestTaken runs q; for DOMAIN@latest, the newest point is the newest
// dated in the past when there is one: a point dated in the future was
// taken while the clock was ahead, before those dated since
// (target.Manifest.Future).
func (s *Service) latestTaken(ctx context.Context, q catalog.Query) ([]api.Point, error) {
	if q.Latest && q.Before.IsZero() {
		past := q
		past.Before = s.cfg.Clock().Add(target.ClockSlack)
		if ps, err := s.cat.Points(ctx, past); err != nil || len(ps) > 0 {
			return ps, err
		}
	}
	return s.cat.Points(ctx, q)
}

// domainOfName makes q's domain, when it is a name, that of one domain:
// the UUID libvirt here has for it, or else the one UUID the catalog's
// points of that name have. Hosts sharing a target may each have a VM of
// the name: a name that stands for several is refused, naming their UUIDs.
func (s *Service) domainOfName(ctx context.Context, q *catalog.Query) error {
	if q.Domain == "" || uuidRe.MatchString(q.Domain) {
		return nil
	}
	if conn, err := s.libvirt(); err == nil {
		if _, uuid, err := virt.DomainID(conn, q.Domain); err == nil {
			q.Domain = uuid
			return nil
		}
	}
	ps, err := s.cat.Points(ctx, catalog.Query{Target: q.Target, Domain: q.Domain})
	if err != nil {
		return err
	}
	var uuids []string
	for _, p := range ps {
		if p.DomainUUID != "" && !slices.Contains(uuids, p.DomainUUID) {
			uuids = append(uuids, p.DomainUUID)
		}
	}
	switch len(uuids) {
	case 0:
		return nil
	case 1:
		q.Domain = uuids[0]
		return nil
	}
	slices.Sort(uuids)
	return api.Errorf(api.CodeBadRequest, "domain %q names %d domains in the targets (UUIDs %s): name one by its UUID (UUID@latest)",
		q.Domain, len(uuids), strings.Join(uuids, ", "))
}

// parsePoint makes a catalog query of a point spec.
func parsePoint(spec string) (catalog.Query, error) {
	if pointIDRe.MatchString(spec) {
		return catalog.Query{ID: spec}, nil
	}
	dom, when, ok := strings.Cut(spec, "@")
	if !ok || dom == "" || when == "" {
		return catalog.Query{}, api.Errorf(api.CodeBadRequest, "point %q: give an ID (20261122T020000Z-1a2b3c4d), DOMAIN@latest or DOMAIN@<RFC 3339 time>", spec)
	}
	if err := checkDomainName("point "+spec+": domain", dom); err != nil {
		return catalog.Query{}, err
	}
	q := catalog.Query{Domain: dom, Latest: true}
	if when != "latest" {
		t, err := time.Parse(time.RFC3339, when)
		if err != nil {
			return catalog.Query{}, api.Errorf(api.CodeBadRequest, "point %q: time %q is not RFC 3339 (2026-11-22T02:00:00Z)", spec, when)
		}
		q.Before = t
	}
	return q, nil
}

// pointDisk checks that p has disk.
func pointDisk(p api.Point, disk string) error {
	var names []string
	for _, d := range p.Disks {
		names = append(names, d.Name)
	}
	if !slices.Contains(names, disk) {
		return api.Errorf(api.CodeNotFound, "point %s has no disk %q (disks: %s)", p.ID, disk, strings.Join(names, ", "))
	}
	return nil
}
