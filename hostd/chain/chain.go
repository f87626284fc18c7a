// Package chain is the checkpoint and bitmap policy of backups: which
// level a backup takes and from which base point, which disks can be read
// incrementally from which checkpoint and, typed, why the others are read
// in full, and which of a target's checkpoints the chain still needs. Each
// target has a lineage of its own (checkpoints named virtkeep.TARGET.*).
// The three backup drivers (libvirt online, shut-off, plain QEMU) share it.
package chain

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/target"
)

// Levels a backup may be asked for: a point's levels (target.LevelFull
// and the others), or auto, which lets the chain and the policy choose.
const (
	LevelFull = target.LevelFull
	LevelInc  = target.LevelInc
	LevelDiff = target.LevelDiff
	LevelAuto = "auto"
)

// Prefix is the name prefix of target's checkpoints.
func Prefix(targetName string) string { return "virtkeep." + targetName + "." }

// NewCheckpointName names the checkpoint a backup into targetName creates.
func NewCheckpointName(targetName string, t time.Time) string {
	return Prefix(targetName) + t.UTC().Format("20060102T150405.000000000Z")
}

// Chain is what a target knows of a domain's chain.
type Chain struct {
	Last, LastFull *target.Manifest
}

// Load reads the chain of domain uuid from repo. A point in damaged
// (verification found it damaged) is never a base: when it is the newest,
// the chain starts anew with a full, as it does when it is the last full
// under a differential. A point dated in the future is never a base
// either (target.Manifest.Future).
//
// The points come from the repository's metadata cache and a listing of
// the recent ones (target.Repository.RecentPoints); when a base it picks
// from the cache is gone (pruned elsewhere), the whole repository is
// listed and the chain picked again.
func Load(ctx context.Context, repo *target.Repository, uuid string, damaged map[string]string, log *slog.Logger) (Chain, error) {
	bad := func(id string, err error) {
		log.Warn("point unreadable, ignored for the chain", "point", id, "err", err)
	}
	pts, err := repo.RecentPoints(ctx, uuid, bad)
	if err != nil {
		return Chain{}, err
	}
	c := pick(repo, pts, uuid, damaged, log)
	for _, m := range []*target.Manifest{c.Last, c.LastFull} {
		if m == nil {
			continue
		}
		if ok, err := repo.HasPoint(ctx, m.ID); err != nil {
			return Chain{}, err
		} else if !ok {
			log.Info("a base point the cache named is gone: listing every point", "point", m.ID)
			if pts, err = repo.Points(ctx, bad); err != nil {
				return Chain{}, err
			}
			return pick(repo, pts, uuid, damaged, log), nil
		}
	}
	return c, nil
}

// pick is the chain of domain uuid among pts.
func pick(repo *target.Repository, pts []*target.Manifest, uuid string, damaged map[string]string, log *slog.Logger) Chain {
	var c Chain
	sort.SliceStable(pts, func(i, j int) bool { return pts[i].Time.Before(pts[j].Time) })
	now := repo.Now()
	for _, m := range pts {
		if m.DomainUUID != uuid {
			continue
		}
		if m.Future(now) {
			// Taken while the clock was ahead: whatever came after it
			// is dated before it. The newest point dated in the past is
			// the base; its checkpoint, if gone, makes a full read.
			log.Warn("point dated in the future (the clock was ahead when it was taken): not a base", "point", m.ID, "time", m.Time)
			continue
		}
		if problem, bad := damaged[m.ID]; bad {
			log.Warn("point failed verification: not a base, the next backup reads its disks in full", "point", m.ID, "problem", problem)
			c.Last = nil
			if m.Level == target.LevelFull {
				c.LastFull = nil
			}
			continue
		}
		c.Last = m
		if m.Level == target.LevelFull {
			c.LastFull = m
		}
	}
	return c
}

// Resolve turns a requested level into the level taken and its base
// point: auto is inc when there is a point, and any level without a base
// is full.
func (c Chain) Resolve(level string, log *slog.Logger) (string, *target.Manifest) {
	asked := level
	var base *target.Manifest
	switch level {
	case LevelAuto, LevelInc:
		base = c.Last
	case LevelDiff:
		base = c.LastFull
	case LevelFull:
		return LevelFull, nil
	}
	if level == LevelAuto {
		level = LevelInc
	}
	if base == nil {
		if asked != LevelAuto {
			log.Info("no earlier point of this domain in the target: taking a full backup", "asked", asked)
		}
		return LevelFull, nil
	}
	return level, base
}

// ReasonKind is why a disk of an incremental is read in full.
type ReasonKind int

const (
	NoBitmaps          ReasonKind = iota + 1 // raw: no dirty bitmaps
	DiskAdded                                // not in the base point
	DiskResized                              // size changed since the base
	NoCheckpoint                             // the base has no checkpoint of this target for it
	BitmapMissing                            // the checkpoint's bitmap is gone
	BitmapInconsistent                       // QEMU was killed while it was in use
	BitmapNotRecording                       // disabled
	MetadataLost                             // libvirt lost the checkpoint and it could not be redefined
)

// Reason says why a disk is read in full; Checkpoint is the checkpoint it
// concerns when the checkpoint itself is unusable.
type Reason struct {
	Kind       ReasonKind
	Checkpoint string
	Text       string
}

func (r Reason) String() string { return r.Text }

// broken reports whether r makes its checkpoint unusable.
func (r Reason) broken() bool {
	switch r.Kind {
	case BitmapMissing, BitmapInconsistent, BitmapNotRecording, MetadataLost:
		return r.Checkpoint != ""
	}
	return false
}

// Bitmap is a dirty bitmap as a source reports it.
type Bitmap struct {
	Name                    string
	Recording, Inconsistent bool
}

// Disk is one disk as its source reports it now.
type Disk struct {
	Name    string
	Format  string
	Size    int64
	Bitmaps []Bitmap
	Where   string // where the bitmaps live, for messages ("node X", a path)
}

// Plan is, per disk, the checkpoint to read changes since, or why the disk
// is read in full.
type Plan struct {
	Level  string
	Base   *target.Manifest
	Target string
	Incr   map[string]string
	Full   map[string]Reason
}

// NewPlan plans a backup into targetName at level from base over disks.
func NewPlan(targetName, level string, base *target.Manifest, disks []Disk) Plan {
	p := Plan{Level: level, Base: base, Target: targetName, Incr: map[string]string{}, Full: map[string]Reason{}}
	if level == LevelFull {
		return p
	}
	for _, d := range disks {
		cp, reason := p.baseCheckpoint(d)
		if reason.Kind == 0 {
			reason = bitmapReason(cp, d.Where, d.Bitmaps)
		}
		if reason.Kind != 0 {
			p.Full[d.Name] = reason
			continue
		}
		p.Incr[d.Name] = cp
	}
	return p
}

// ReadInFull moves a planned incremental disk to a full read.
func (p *Plan) ReadInFull(disk string, r Reason) {
	delete(p.Incr, disk)
	p.Full[disk] = r
}

// baseCheckpoint returns the checkpoint disk d can be read incrementally
// from, or why it cannot.
func (p Plan) baseCheckpoint(d Disk) (string, Reason) {
	if d.Format != "qcow2" {
		return "", Reason{Kind: NoBitmaps, Text: fmt.Sprintf("%s disks have no dirty bitmaps: read in full, holes and zeroes skipped", d.Format)}
	}
	bd, err := p.Base.Disk(d.Name)
	if err != nil {
		return "", Reason{Kind: DiskAdded, Text: fmt.Sprintf("disk added since point %s", p.Base.ID)}
	}
	if bd.VirtualSize != d.Size {
		return "", Reason{Kind: DiskResized, Text: fmt.Sprintf("disk resized from %d to %d bytes since point %s", bd.VirtualSize, d.Size, p.Base.ID)}
	}
	if bd.Checkpoint == "" || !strings.HasPrefix(bd.Checkpoint, Prefix(p.Target)) {
		return "", Reason{Kind: NoCheckpoint, Text: fmt.Sprintf("point %s has no checkpoint of this target for the disk", p.Base.ID)}
	}
	return bd.Checkpoint, Reason{}
}

// bitmapReason says why bitmap cp among bms (on where) cannot serve an
// incremental; the zero Reason when it can.
func bitmapReason(cp, where string, bms []Bitmap) Reason {
	for _, bm := range bms {
		if bm.Name != cp {
			continue
		}
		switch {
		case bm.Inconsistent:
			return Reason{BitmapInconsistent, cp, fmt.Sprintf("bitmap %s is inconsistent (QEMU was killed while it was in use)", cp)}
		case !bm.Recording:
			return Reason{BitmapNotRecording, cp, fmt.Sprintf("bitmap %s is not recording", cp)}
		}
		return Reason{}
	}
	return Reason{BitmapMissing, cp, fmt.Sprintf("bitmap %s is missing on %s (QEMU stopped without saving it, or it was removed)", cp, where)}
}

// UsesCheckpoint reports whether the base point read disk at cp.
func (p Plan) UsesCheckpoint(disk, cp string) bool {
	if p.Base == nil {
		return false
	}
	bd, err := p.Base.Disk(disk)
	return err == nil && bd.Checkpoint == cp
}

// Broken reports whether planning found checkpoint cp unusable.
func (p Plan) Broken(cp string) bool {
	for _, r := range p.Full {
		if r.broken() && r.Checkpoint == cp {
			return true
		}
	}
	return false
}

// Keep is the checkpoints of this target that must survive repairs before
// the backup: those the plan reads from and those the chain's points still
// need, unless planning found them broken.
func (c Chain) Keep(p Plan) map[string]bool {
	keep := map[string]bool{}
	for _, cp := range p.Incr {
		keep[cp] = true
	}
	for _, m := range []*target.Manifest{c.Last, c.LastFull} {
		if m == nil {
			continue
		}
		for _, d := range m.Disks {
			if d.Checkpoint != "" && !p.Broken(d.Checkpoint) {
				keep[d.Checkpoint] = true
			}
		}
	}
	return keep
}

// Survivors is the set of the target's checkpoints a successful backup at
// level keeps: the new one and, unless it was a full, the last full's (the
// anchor differentials read from).
func (c Chain) Survivors(newCheckpoint, level string) map[string]bool {
	keep := map[string]bool{newCheckpoint: true}
	if level != LevelFull && c.LastFull != nil {
		for _, d := range c.LastFull.Disks {
			keep[d.Checkpoint] = true
		}
	}
	return keep
}
