// Package backup takes backups: of libvirt domains, running (a pull-mode
// backup job, with the guest frozen through its agent only while the job
// starts) or shut off (qemu-nbd over the images), and of plain QEMU
// processes over QMP (fleecing). Each disk is read over NBD, only where it
// is allocated and, for incrementals, dirty (package chain plans which),
// into a point of a target's repository. A failed or cancelled backup
// leaves the domain and its chain as they were.
package backup

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/bitmap"
	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/statedir"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
)

// Consistency levels.
const (
	ConsistencyCrash = "crash"
	ConsistencyFS    = "fs"
	ConsistencyApp   = "app"
)

// Target is a named repository: each target has a checkpoint chain of its
// own, so several targets all get incrementals.
type Target struct {
	Name string
	Repo *target.Repository
}

// Driver takes backups over one libvirt connection.
type Driver struct {
	Conn *libvirt.Connect
	// State holds runtime files; QEMU (user libvirt-qemu) creates NBD
	// sockets and scratch files under State/run.
	State statedir.Dir
	Log   *slog.Logger
	// CleanupTimeout bounds each cleanup step after a failure (default 30 s).
	CleanupTimeout time.Duration
}

// Hooks are fault-injection points for tests.
type Hooks struct {
	// AfterBegin runs once the backup job has started.
	AfterBegin func(ctx context.Context) error
	// BeforeBegin runs with the guest frozen, just before the job is
	// started (a slow libvirt or QEMU).
	BeforeBegin func()
}

// BackupRequest asks for one backup.
type BackupRequest struct {
	Domain             string // name or UUID
	Target             Target
	Level              string // full, inc, diff, auto (default auto)
	Consistency        string // crash, fs, app (default crash)
	RequireConsistency bool
	Mountpoints        []string          // freeze only these (default all)
	PreFreeze          []guestagent.Hook // app: run in the guest before the freeze
	PostThaw           []guestagent.Hook // app: run in the guest after the thaw
	FreezeTimeout      time.Duration     // default 10 s
	Disks              []string          // only these disks (default all)
	Exclude            []string
	// Progress, if set, is called with per-disk progress from the copying
	// goroutines (one disk's calls never overlap each other).
	Progress Progress
	Hooks    *Hooks
	// Damaged are the target's points verification found damaged (ID to
	// problem): none is the base of this backup.
	Damaged map[string]string
}

// Progress is told how far a disk's copy is: bytes done of total.
type Progress func(disk string, done, total int64)

// DiskReport says what happened to one disk.
type DiskReport struct {
	Disk        string `json:"disk"`
	Incremental bool   `json:"incremental"`
	// FullReason says why a disk of an incremental backup was read in full.
	FullReason string    `json:"full_reason,omitempty"`
	Copy       CopyStats `json:"copy"`
}

// Result is what a backup did.
type Result struct {
	Manifest *target.Manifest
	Disks    []DiskReport
	Skipped  []virt.Skipped
	// Repairs lists the checkpoint and bitmap repairs made before the backup.
	Repairs []string
	// Warnings lists what went less well than asked (a consistency fallback).
	Warnings []string
}

// ErrConsistency is returned when the requested consistency could not be
// reached and the request required it.
var ErrConsistency = guestagent.ErrNotReached

// FreezeJournal is where a freeze is recorded until its thaw (package
// recovery thaws what a killed process left frozen).
func FreezeJournal(state statedir.Dir) guestagent.Journal {
	return guestagent.Journal{Dir: state.Path("freeze")}
}

var targetNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

func (e *Driver) log() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (e *Driver) cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	d := e.CleanupTimeout
	if d == 0 {
		d = 30 * time.Second
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// Backup takes one backup of a domain into req.Target. On any failure or
// cancellation the libvirt job is aborted, the new checkpoint removed and
// scratch files deleted, so the domain and its chain are as they were.
func (e *Driver) Backup(ctx context.Context, req BackupRequest) (*Result, error) {
	if !targetNameRe.MatchString(req.Target.Name) {
		return nil, fmt.Errorf("target name %q: use 1-32 letters, digits, - or _", req.Target.Name)
	}
	if req.Level == "" {
		req.Level = chain.LevelAuto
	}
	switch req.Level {
	case chain.LevelFull, chain.LevelInc, chain.LevelDiff, chain.LevelAuto:
	default:
		return nil, fmt.Errorf("level %q: want full, inc, diff or auto", req.Level)
	}
	if req.Consistency == "" {
		req.Consistency = ConsistencyCrash
	}
	switch req.Consistency {
	case ConsistencyCrash, ConsistencyFS, ConsistencyApp:
	default:
		return nil, fmt.Errorf("consistency %q: want crash, fs or app", req.Consistency)
	}
	started := time.Now()
	dom, err := virt.Lookup(e.Conn, req.Domain)
	if err != nil {
		return nil, err
	}
	defer dom.Free()
	name, _ := dom.GetName()
	uuid, err := dom.GetUUIDString()
	if err != nil {
		return nil, err
	}
	log := e.log().With("domain", name, "target", req.Target.Name)
	unlock, err := e.State.LockDomain(ctx, uuid, name, e.log())
	if err != nil {
		return nil, err
	}
	defer unlock()
	state, _, err := dom.GetState()
	if err != nil {
		return nil, fmt.Errorf("domain %s: state: %w", name, err)
	}
	liveXML, err := dom.GetXMLDesc(0)
	if err != nil {
		return nil, fmt.Errorf("domain %s: xml: %w", name, err)
	}
	// Without DOMAIN_XML_SECURE: VNC and SPICE passwords stay out of the
	// repository.
	inactiveXML, _ := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(liveXML); err != nil {
		return nil, fmt.Errorf("domain %s: parse xml: %w", name, err)
	}
	disks, skipped, err := virt.SelectDisks(&dx, req.Disks, req.Exclude)
	if err != nil {
		return nil, err
	}
	for _, s := range skipped {
		if s.Unprotected {
			log.Warn("disk skipped", "disk", s.Disk, "reason", s.Reason)
		} else {
			log.Info("disk skipped", "disk", s.Disk, "reason", s.Reason)
		}
	}
	chainStart := time.Now()
	ch, err := chain.Load(ctx, req.Target.Repo, uuid, req.Damaged, e.log())
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", req.Target.Name, err)
	}
	log.Info("backup phase", "phase", "chain (the target's points)", "took", ms(time.Since(chainStart)))
	level, base := ch.Resolve(req.Level, log)
	b := &run{started: started, e: e, req: req, dom: dom, name: name, uuid: uuid, log: log, disks: disks, level: level, base: base, chain: ch,
		liveXML: liveXML, inactiveXML: inactiveXML, dx: &dx, res: &Result{Skipped: skipped}, plan: chain.Plan{Level: level, Base: base, Target: req.Target.Name}}
	active := state == libvirt.DOMAIN_RUNNING || state == libvirt.DOMAIN_PAUSED || state == libvirt.DOMAIN_BLOCKED
	if active {
		err = b.online(ctx)
	} else {
		err = b.offline(ctx)
	}
	if err != nil {
		return nil, err
	}
	return b.res, nil
}

// run is one backup in progress.
type run struct {
	started     time.Time
	e           *Driver
	req         BackupRequest
	dom         *libvirt.Domain
	name, uuid  string
	log         *slog.Logger
	disks       []virt.Disk
	level       string
	base        *target.Manifest
	chain       chain.Chain
	plan        chain.Plan
	liveXML     string
	inactiveXML string
	dx          *libvirtxml.Domain
	res         *Result

	newCheckpoint string
	freezeMS      int64
	consistency   string
	namedBitmaps  bool   // exports name dirty bitmaps after themselves (qemu-nbd, plain QEMU)
	agentSocket   string // plain QEMU: the guest agent's socket
}

// copyDisks reads every disk from the NBD exports dial opens and writes the
// point. It returns the manifest once the point is committed.
func (b *run) copyDisks(ctx context.Context, dial func(ctx context.Context, disk virt.Disk, contexts []string) (*nbd.Pool, error)) (*target.Manifest, error) {
	repo := b.req.Target.Repo
	parent := ""
	if b.base != nil && b.level != chain.LevelFull {
		parent = b.base.ID
	}
	newStart := time.Now()
	pw, err := repo.NewPoint(ctx, target.PointSpec{
		Domain: b.name, DomainUUID: b.uuid, Level: b.level, Consistency: b.consistency, FreezeMS: b.freezeMS,
		Parent: parent, DomainXML: b.liveXML, DomainXMLInactive: b.inactiveXML,
		Tags: map[string]string{"target": b.req.Target.Name},
	})
	if err != nil {
		return nil, err
	}
	b.phase("new point (lock, pack index)", newStart)
	committed := false
	defer func() {
		if !committed {
			cctx, cancel := b.e.cleanupCtx(ctx)
			pw.Abort(cctx)
			cancel()
		}
	}()
	if err := b.saveFirmware(ctx, pw); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	reports := make([]DiskReport, len(b.disks))
	errs := make(chan error, len(b.disks))
	sem := make(chan struct{}, 2) // disks copied at once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, d := range b.disks {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			rep, err := b.copyOne(ctx, pw, d, dial)
			mu.Lock()
			reports[i] = rep
			mu.Unlock()
			if err != nil {
				cancel()
				err = fmt.Errorf("disk %s: %w", d.Target, err)
			}
			errs <- err
		}()
	}
	var first error
	for range b.disks {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return nil, first
	}
	commitStart := time.Now()
	m, err := pw.Commit(ctx)
	if err != nil {
		return nil, err
	}
	b.phase("commit (sync, manifest)", commitStart)
	committed = true
	b.res.Disks = reports
	b.res.Manifest = m
	return m, nil
}

func (b *run) copyOne(ctx context.Context, pw *target.PointWriter, d virt.Disk, dial func(ctx context.Context, disk virt.Disk, contexts []string) (*nbd.Pool, error)) (DiskReport, error) {
	rep := DiskReport{Disk: d.Target, FullReason: b.plan.Full[d.Target].String()}
	since := b.plan.Incr[d.Target]
	dirtyCtx := ""
	if since != "" {
		dirtyCtx = b.dirtyContext(d, since)
	}
	pool, err := dial(ctx, d, []string{nbd.ContextBaseAllocation})
	if err != nil {
		return rep, err
	}
	defer pool.Close()
	c := pool.Client()
	mapStart := time.Now()
	plan, err := diskPlan(ctx, pool, dirtyCtx)
	if err != nil {
		return rep, err
	}
	spec := target.DiskSpec{Name: d.Target, Format: d.Format, VirtualSize: c.Size(), ParentCheckpoint: since}
	if d.Format == "qcow2" {
		spec.Checkpoint = b.newCheckpoint
		spec.FormatDetails = virt.Qcow2Details(d.Path)
	}
	if since != "" {
		spec.Base = b.base.ID
		rep.Incremental = true
	}
	mapTime := time.Since(mapStart)
	dw, err := pw.AddDisk(ctx, spec)
	if err != nil {
		return rep, err
	}
	progress := func(done, total int64) {
		if b.req.Progress != nil {
			b.req.Progress(d.Target, done, total)
		}
	}
	copyStart := time.Now()
	st, err := CopyDisk(ctx, pool, plan, since != "", dw, CopyOptions{Progress: progress})
	rep.Copy = st
	if err != nil {
		return rep, err
	}
	if err := dw.Close(ctx); err != nil {
		return rep, err
	}
	ds := dw.Stats()
	b.log.Info("disk copied", "disk", d.Target, "incremental", rep.Incremental, "read", st.BytesRead, "skipped", st.BytesSkipped, "zero", st.BytesZero, "stored", ds.BytesStored)
	// Per-phase times, for finding where a second goes without a profiler:
	// wall times, and busy times summed over what runs side by side.
	b.log.Info("disk phases", "disk", d.Target, "extent_map", ms(mapTime), "copy_wall", ms(time.Since(copyStart)),
		"read_busy", ms(st.Read), "hash_busy", ms(ds.Hash), "compress_busy", ms(ds.Seal), "store_busy", ms(ds.Store))
	return rep, nil
}

// diskPlan maps what to read of the export: its allocation, and with
// dirtyCtx (an incremental) its dirty bitmap over it, the allocation asked
// only where the bitmap says dirty. The bitmap is walked on a connection
// of its own that negotiates it alone: on the pool's, each query would
// make QEMU map the allocation of the same window too (a 1 TiB disk's
// whole metadata for a few dirty megabytes).
func diskPlan(ctx context.Context, pool *nbd.Pool, dirtyCtx string) (*bitmap.Map, error) {
	c := pool.Client()
	if dirtyCtx == "" {
		return bitmap.Allocation(ctx, c, c.Size())
	}
	dc, err := pool.DialContexts(ctx, []string{dirtyCtx})
	if err != nil {
		return nil, err
	}
	defer dc.Close()
	if !dc.HasContext(dirtyCtx) {
		return nil, fmt.Errorf("export offers no %s", dirtyCtx)
	}
	dirty, err := bitmap.DirtyMap(ctx, dc, dirtyCtx, dc.Size())
	if err != nil {
		return nil, err
	}
	alloc, err := bitmap.AllocationOf(ctx, c, dirty)
	if err != nil {
		return nil, err
	}
	return bitmap.Overlay(alloc, dirty)
}

// ms rounds d to milliseconds for logs.
func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// phase logs how long a phase of the backup took.
func (b *run) phase(name string, since time.Time) {
	b.log.Info("backup phase", "phase", name, "took", ms(time.Since(since)))
}

// maxFirmware bounds an NVRAM or TPM state file (OVMF's variables are
// 128 KiB to 4 MiB, a TPM's state some KiB).
const maxFirmware = 64 << 20

// saveFirmware stores the domain's NVRAM (UEFI variables) and software TPM
// state with the point.
func (b *run) saveFirmware(ctx context.Context, pw *target.PointWriter) error {
	if b.dx == nil {
		return nil
	}
	if b.dx.OS != nil && b.dx.OS.NVRam != nil && b.dx.OS.NVRam.NVRam != "" {
		data, err := statedir.ReadGuestFile(b.dx.OS.NVRam.NVRam, maxFirmware, statedir.GuestOwners()...)
		if err != nil {
			return fmt.Errorf("read NVRAM %s: %w", b.dx.OS.NVRam.NVRam, err)
		}
		if err := pw.AddBlob(ctx, "nvram", data); err != nil {
			return err
		}
	}
	if b.dx.Devices != nil && len(b.dx.Devices.TPMs) > 0 {
		p := filepath.Join("/var/lib/libvirt/swtpm", b.uuid, "tpm2", "tpm2-00.permall")
		data, err := statedir.ReadGuestFile(p, maxFirmware, statedir.GuestOwners()...)
		if err != nil {
			b.log.Warn("TPM state not saved", "path", p, "err", err)
			return nil
		}
		return pw.AddBlob(ctx, "tpm", data)
	}
	return nil
}
