package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/target"
)

// pointRecord is a point as list and info print it (the CLI contract).
type pointRecord struct {
	ID          string       `json:"id"`
	Domain      string       `json:"domain"`
	DomainUUID  string       `json:"domain_uuid"`
	Target      string       `json:"target"`
	Time        string       `json:"time"`
	Level       string       `json:"level"`
	Consistency string       `json:"consistency"`
	FreezeMS    int64        `json:"freeze_ms"`
	Checkpoint  string       `json:"checkpoint"`
	Parent      string       `json:"parent"`
	Disks       []diskRecord `json:"disks"`
}

type diskRecord struct {
	Name        string `json:"name"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual_size"`
	BytesRead   int64  `json:"bytes_read"`
	BytesStored int64  `json:"bytes_stored"`
	Checkpoint  string `json:"checkpoint,omitempty"`
}

func record(m *target.Manifest, targetName string) pointRecord {
	r := pointRecord{ID: m.ID, Domain: m.Domain, DomainUUID: m.DomainUUID, Target: targetName, Time: m.Time.UTC().Format(time.RFC3339Nano),
		Level: m.Level, Consistency: m.Consistency, FreezeMS: m.FreezeMS, Parent: m.Parent, Disks: []diskRecord{}}
	for _, d := range m.Disks {
		if r.Checkpoint == "" {
			r.Checkpoint = d.Checkpoint
		}
		r.Disks = append(r.Disks, diskRecord{Name: d.Name, Format: d.Format, VirtualSize: d.VirtualSize, BytesRead: d.BytesRead, BytesStored: d.BytesStored, Checkpoint: d.Checkpoint})
	}
	return r
}

// targetPoints is the points of one target.
type targetPoints struct {
	cfg    TargetConfig
	repo   *target.Repository
	points []*target.Manifest
}

// loadPoints reads the manifests of the named target, or of all targets.
// Targets that hold no repository yet have no points. With tolerate, a
// target that cannot be reached (an offsite store that is down, a bucket
// not made yet) is skipped with a warning when all targets are read, so
// that restores from the others still work; it is remembered in
// a.unreachable for error messages.
func (a *app) loadPoints(ctx context.Context, only string, tolerate bool) ([]targetPoints, error) {
	tcs := a.cfg.Targets
	if only != "" {
		tc, err := a.cfg.target(only)
		if err != nil {
			return nil, err
		}
		tcs = []TargetConfig{tc}
	}
	var out []targetPoints
	for _, tc := range tcs {
		repo, err := a.openTarget(ctx, tc, false)
		if errors.Is(err, target.ErrNotRepository) {
			continue
		}
		// A configuration error (a key that needs a passphrase) is the
		// operator's to fix, not an unreachable target.
		if err != nil && tolerate && only == "" && exitCode(err) != exitUsage {
			a.log.Warn("target skipped: cannot open its repository", "target", tc.Name, "err", err)
			a.unreachable = append(a.unreachable, tc.Name)
			continue
		}
		if err != nil {
			return nil, err
		}
		pts, err := repo.Points(ctx, func(id string, err error) {
			a.log.Warn("point unreadable", "target", tc.Name, "point", id, "err", err)
		})
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", tc.Name, err)
		}
		out = append(out, targetPoints{tc, repo, pts})
	}
	return out, nil
}

var pointIDRe = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$`)

// resolvePoint finds POINT: an ID, DOMAIN@latest, or DOMAIN@<RFC 3339 time>
// (the newest point at or before it).
func (a *app) resolvePoint(ctx context.Context, spec, only string) (*target.Manifest, targetPoints, error) {
	tps, err := a.loadPoints(ctx, only, true)
	if err != nil {
		return nil, targetPoints{}, err
	}
	if pointIDRe.MatchString(spec) {
		for _, tp := range tps {
			for _, m := range tp.points {
				if m.ID == spec {
					return m, tp, nil
				}
			}
		}
		return nil, targetPoints{}, notFoundErr("no point %s in %s", spec, a.targetsLabel(only))
	}
	dom, when, ok := strings.Cut(spec, "@")
	if !ok || dom == "" || when == "" {
		return nil, targetPoints{}, usageErr("point %q: give an ID (20261122T020000Z-1a2b3c4d), DOMAIN@latest or DOMAIN@<RFC 3339 time>", spec)
	}
	limit := time.Now().Add(time.Hour)
	if when != "latest" {
		t, err := time.Parse(time.RFC3339, when)
		if err != nil {
			return nil, targetPoints{}, usageErr("point %q: time %q is not RFC 3339 (2026-11-22T02:00:00Z)", spec, when)
		}
		limit = t
	}
	var best *target.Manifest
	var bestTP targetPoints
	for _, tp := range tps {
		for _, m := range tp.points {
			if (m.Domain == dom || m.DomainUUID == dom) && !m.Time.After(limit) && (best == nil || m.Time.After(best.Time)) {
				best, bestTP = m, tp
			}
		}
	}
	if best == nil {
		return nil, targetPoints{}, notFoundErr("no point of domain %q at or before %s in %s", dom, when, a.targetsLabel(only))
	}
	return best, bestTP, nil
}

func (a *app) targetsLabel(only string) string {
	if only == "" {
		if len(a.unreachable) > 0 {
			return "any reachable target (unreachable: " + strings.Join(a.unreachable, ", ") + ")"
		}
		return "any target"
	}
	return "target " + only
}

func sortRecords(rs []pointRecord) {
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Time < rs[j].Time })
}
