package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/bitmap"
	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
)

// Levels a backup may be asked for.
const (
	LevelFull = "full"
	LevelInc  = "inc"
	LevelDiff = "diff"
	LevelAuto = "auto"
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

// Engine runs backups against one libvirt connection.
type Engine struct {
	Conn *libvirt.Connect
	// StateDir holds runtime files; QEMU (user libvirt-qemu) creates NBD
	// sockets and scratch files under StateDir/run.
	StateDir string
	Log      *slog.Logger
	// CleanupTimeout bounds each cleanup step after a failure (default 30 s).
	CleanupTimeout time.Duration
	// BootFileDirs are the directories a restored or booted domain may
	// take firmware, kernels and initrds from (default DefaultBootFileDirs).
	BootFileDirs []string
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
	Progress func(Progress)
	// afterBegin is a test hook run once the backup job has started.
	afterBegin func(ctx context.Context) error
	// beforeBegin is a test hook run with the guest frozen, just before
	// the job is started (a slow libvirt or QEMU).
	beforeBegin func()
}

// Progress is the state of one disk's copy.
type Progress struct {
	Disk        string
	Done, Total int64
}

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
	Skipped  []Skipped
	// Repairs lists the checkpoint and bitmap repairs made before the backup.
	Repairs []string
	// Warnings lists what went less well than asked (a consistency fallback).
	Warnings []string
}

// ErrConsistency is returned when the requested consistency could not be
// reached and the request required it.
var ErrConsistency = guestagent.ErrNotReached

func (e *Engine) freezeJournal() guestagent.Journal {
	return guestagent.Journal{Dir: filepath.Join(e.StateDir, "freeze")}
}

// RecoverFrozen thaws every guest a killed run left frozen (the freeze
// journal under StateDir names them); a guest whose freezer still runs is
// left to it, and the record of a domain that no longer exists is retired.
// The daemon calls it when it starts and then every second, so a CLI
// killed mid-freeze leaves its guest frozen for seconds at most;
// virtkeepd --cleanup runs it alone.
func (e *Engine) RecoverFrozen(ctx context.Context) error {
	return guestagent.Recover(ctx, e.freezeJournal(), func(in guestagent.Intent) (guestagent.Agent, error) {
		switch in.Kind {
		case "socket":
			return &guestagent.SocketAgent{Path: in.Target}, nil
		case "libvirt":
		default:
			return nil, fmt.Errorf("intent of unknown kind %q", in.Kind)
		}
		dom, err := e.Conn.LookupDomainByUUIDString(in.Target)
		if errors.Is(err, libvirt.ERR_NO_DOMAIN) {
			return nil, fmt.Errorf("domain %s (%s): %w", in.Name, in.Target, guestagent.ErrGone)
		}
		if err != nil {
			return nil, err
		}
		return guestagent.LibvirtAgent{Dom: dom}, nil
	}, e.log())
}

var targetNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

func checkpointPrefix(targetName string) string { return "virtkeep." + targetName + "." }

func (e *Engine) log() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (e *Engine) cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	d := e.CleanupTimeout
	if d == 0 {
		d = 30 * time.Second
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// lookup finds a domain by name or UUID.
func (e *Engine) lookup(name string) (*libvirt.Domain, error) {
	dom, err := e.Conn.LookupDomainByName(name)
	if err == nil {
		return dom, nil
	}
	if d, uerr := e.Conn.LookupDomainByUUIDString(name); uerr == nil {
		return d, nil
	}
	if errors.Is(err, libvirt.ERR_NO_DOMAIN) {
		return nil, fmt.Errorf("domain %q not found: %w", name, err)
	}
	return nil, fmt.Errorf("domain %q: %w", name, err)
}

// chainInfo is what the target knows of a domain's chain.
type chainInfo struct {
	last, lastFull *target.Manifest
}

// resolve turns a requested level into the level taken and its base point:
// auto is inc when there is a point, and any level without a base is full.
func (c chainInfo) resolve(level string, log *slog.Logger) (string, *target.Manifest) {
	asked := level
	var base *target.Manifest
	switch level {
	case LevelAuto, LevelInc:
		base = c.last
	case LevelDiff:
		base = c.lastFull
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

func (e *Engine) chain(ctx context.Context, repo *target.Repository, uuid string) (chainInfo, error) {
	var c chainInfo
	pts, err := repo.Points(ctx, func(id string, err error) {
		e.log().Warn("point unreadable, ignored for the chain", "point", id, "err", err)
	})
	if err != nil {
		return c, err
	}
	sort.SliceStable(pts, func(i, j int) bool { return pts[i].Time.Before(pts[j].Time) })
	for _, m := range pts {
		if m.DomainUUID != uuid {
			continue
		}
		c.last = m
		if m.Level == target.LevelFull {
			c.lastFull = m
		}
	}
	return c, nil
}

// Backup takes one backup of a domain into req.Target. On any failure or
// cancellation the libvirt job is aborted, the new checkpoint removed and
// scratch files deleted, so the domain and its chain are as they were.
func (e *Engine) Backup(ctx context.Context, req BackupRequest) (*Result, error) {
	if !targetNameRe.MatchString(req.Target.Name) {
		return nil, fmt.Errorf("target name %q: use 1-32 letters, digits, - or _", req.Target.Name)
	}
	if req.Level == "" {
		req.Level = LevelAuto
	}
	switch req.Level {
	case LevelFull, LevelInc, LevelDiff, LevelAuto:
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
	dom, err := e.lookup(req.Domain)
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
	unlock, err := e.lockDomain(ctx, uuid, name)
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
	disks, skipped, err := selectDisks(&dx, req.Disks, req.Exclude)
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
	ch, err := e.chain(ctx, req.Target.Repo, uuid)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", req.Target.Name, err)
	}
	level, base := ch.resolve(req.Level, log)
	b := &run{e: e, req: req, dom: dom, name: name, uuid: uuid, log: log, disks: disks, level: level, base: base, chain: ch,
		liveXML: liveXML, inactiveXML: inactiveXML, dx: &dx, res: &Result{Skipped: skipped}}
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
	e           *Engine
	req         BackupRequest
	dom         *libvirt.Domain
	name, uuid  string
	log         *slog.Logger
	disks       []diskInfo
	level       string
	base        *target.Manifest
	chain       chainInfo
	liveXML     string
	inactiveXML string
	dx          *libvirtxml.Domain
	res         *Result

	newCheckpoint string
	incr          map[string]string // disk -> checkpoint to read changes since
	fullReason    map[string]string
	freezeMS      int64
	consistency   string
	namedBitmaps  bool   // exports name dirty bitmaps after themselves (qemu-nbd, plain QEMU)
	agentSocket   string // plain QEMU: the guest agent's socket
}

// runDir makes the backup's private runtime directory: new (never one
// that exists), 0700 and owned by QEMU's user, which creates its NBD
// socket and scratch files in it; no other local user can replace the
// socket (and feed forged data into the backup) or plant symlinks.
func (b *run) runDir() (string, error) {
	run, err := b.e.RunDir()
	if err != nil {
		return "", fmt.Errorf("runtime dir: %w", err)
	}
	// Short: a unix socket path must fit in 108 bytes.
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	dir := filepath.Join(run, "b-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("runtime dir: %w", err)
	}
	uid, gid := QEMUIDs()
	if err := os.Lchown(dir, uid, gid); err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("runtime dir: %w", err)
	}
	return dir, nil
}

// copyDisks reads every disk from the NBD exports dial opens and writes the
// point. It returns the manifest once the point is committed.
func (b *run) copyDisks(ctx context.Context, dial func(ctx context.Context, disk diskInfo, contexts []string) (*nbd.Pool, error)) (*target.Manifest, error) {
	repo := b.req.Target.Repo
	parent := ""
	if b.base != nil && b.level != LevelFull {
		parent = b.base.ID
	}
	pw, err := repo.NewPoint(ctx, target.PointSpec{
		Domain: b.name, DomainUUID: b.uuid, Level: b.level, Consistency: b.consistency, FreezeMS: b.freezeMS,
		Parent: parent, DomainXML: b.liveXML, DomainXMLInactive: b.inactiveXML,
		Tags: map[string]string{"target": b.req.Target.Name},
	})
	if err != nil {
		return nil, err
	}
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
	m, err := pw.Commit(ctx)
	if err != nil {
		return nil, err
	}
	committed = true
	b.res.Disks = reports
	b.res.Manifest = m
	return m, nil
}

func (b *run) copyOne(ctx context.Context, pw *target.PointWriter, d diskInfo, dial func(ctx context.Context, disk diskInfo, contexts []string) (*nbd.Pool, error)) (DiskReport, error) {
	rep := DiskReport{Disk: d.Target, FullReason: b.fullReason[d.Target]}
	since := b.incr[d.Target]
	contexts := []string{nbd.ContextBaseAllocation}
	dirtyCtx := ""
	if since != "" {
		dirtyCtx = b.dirtyContext(d, since)
		contexts = append(contexts, dirtyCtx)
	}
	pool, err := dial(ctx, d, contexts)
	if err != nil {
		return rep, err
	}
	defer pool.Close()
	c := pool.Client()
	plan, err := bitmap.Allocation(ctx, c, c.Size())
	if err != nil {
		return rep, err
	}
	spec := target.DiskSpec{Name: d.Target, Format: d.Format, VirtualSize: c.Size(), ParentCheckpoint: since}
	if d.Format == "qcow2" {
		spec.Checkpoint = b.newCheckpoint
		spec.FormatDetails = qcow2Details(d.Path)
	}
	if since != "" {
		if !c.HasContext(dirtyCtx) {
			return rep, fmt.Errorf("export offers no %s", dirtyCtx)
		}
		dirty, err := bitmap.DirtyMap(ctx, c, dirtyCtx, c.Size())
		if err != nil {
			return rep, err
		}
		if plan, err = bitmap.Overlay(plan, dirty); err != nil {
			return rep, err
		}
		spec.Base = b.base.ID
		rep.Incremental = true
	}
	dw, err := pw.AddDisk(ctx, spec)
	if err != nil {
		return rep, err
	}
	progress := func(done, total int64) {
		if b.req.Progress != nil {
			b.req.Progress(Progress{Disk: d.Target, Done: done, Total: total})
		}
	}
	st, err := CopyDisk(ctx, pool, plan, since != "", dw, CopyOptions{Progress: progress})
	rep.Copy = st
	if err != nil {
		return rep, err
	}
	if err := dw.Close(ctx); err != nil {
		return rep, err
	}
	b.log.Info("disk copied", "disk", d.Target, "incremental", rep.Incremental, "read", st.BytesRead, "skipped", st.BytesSkipped, "zero", st.BytesZero, "stored", dw.Stats().BytesStored)
	return rep, nil
}

// saveFirmware stores the domain's NVRAM (UEFI variables) and software TPM
// state with the point.
func (b *run) saveFirmware(ctx context.Context, pw *target.PointWriter) error {
	if b.dx == nil {
		return nil
	}
	if b.dx.OS != nil && b.dx.OS.NVRam != nil && b.dx.OS.NVRam.NVRam != "" {
		data, err := os.ReadFile(b.dx.OS.NVRam.NVRam)
		if err != nil {
			return fmt.Errorf("read NVRAM %s: %w", b.dx.OS.NVRam.NVRam, err)
		}
		if err := pw.AddBlob(ctx, "nvram", data); err != nil {
			return err
		}
	}
	if b.dx.Devices != nil && len(b.dx.Devices.TPMs) > 0 {
		p := filepath.Join("/var/lib/libvirt/swtpm", b.uuid, "tpm2", "tpm2-00.permall")
		data, err := os.ReadFile(p)
		if err != nil {
			b.log.Warn("TPM state not saved", "path", p, "err", err)
			return nil
		}
		return pw.AddBlob(ctx, "tpm", data)
	}
	return nil
}
