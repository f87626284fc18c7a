package service

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/catalog"
	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/jobs"
	"github.com/virtkeep/virtkeep/hostd/restore"
	"github.com/virtkeep/virtkeep/hostd/statedir"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/target"
)

// submit queues a job; Run's errors get their codes.
func (s *Service) submit(spec jobs.Spec) (api.Job, error) {
	if err := s.writable(); err != nil {
		return api.Job{}, err
	}
	run := spec.Run
	spec.Run = func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
		res, err := run(ctx, h)
		return res, coded(err)
	}
	spec.Code = codeOf
	j, err := s.jobs.Submit(spec)
	return j, coded(err)
}

// transient: a target that could not be reached, or that another host's
// prune or GC holds. A backup, copy or restore that failed leaves things
// as they were, so trying again is safe.
func transient(err error) bool {
	c := api.CodeOf(err)
	return c == api.CodeUnavailable || c == api.CodeLocked
}

// domainID is virt.DomainID on the libvirt connection, asked once more on
// a new connection when the first finds it dead (libvirtd restarted).
func (s *Service) domainID(name string) (string, string, error) {
	for try := 0; ; try++ {
		conn, err := s.libvirt()
		if err != nil {
			return "", "", err
		}
		n, uuid, err := virt.DomainID(conn, name)
		if try > 0 || !libvirtLost(err) {
			return n, uuid, err
		}
	}
}

// progressTo sends an operation's progress to its job.
func progressTo(h *jobs.Handle) func(disk string, done, total int64) { return h.Progress }

// Backup queues a backup of one domain.
func (s *Service) Backup(ctx context.Context, r api.BackupRequest) (api.Job, error) {
	return s.backup(ctx, r, backupExtra{})
}

// backupExtra is what a policy's backup has besides its request.
type backupExtra struct {
	preFreeze, postThaw []guestagent.Hook
	policy, parent      string
}

func (s *Service) backup(ctx context.Context, r api.BackupRequest, x backupExtra) (api.Job, error) {
	if err := checkDomainName("domain", r.Domain); err != nil {
		return api.Job{}, err
	}
	if err := checkDisks(append(append([]string(nil), r.Disks...), r.Exclude...)); err != nil {
		return api.Job{}, err
	}
	switch r.Level {
	case "", chain.LevelFull, chain.LevelInc, chain.LevelDiff, chain.LevelAuto:
	default:
		return api.Job{}, api.Errorf(api.CodeBadRequest, "level %q: want full, inc, diff or auto", r.Level)
	}
	switch r.Consistency {
	case "", backup.ConsistencyCrash, backup.ConsistencyFS, backup.ConsistencyApp:
	default:
		return api.Job{}, api.Errorf(api.CodeBadRequest, "consistency %q: want crash, fs or app", r.Consistency)
	}
	if r.FreezeTimeoutMS < 0 || r.FreezeTimeoutMS > 3600_000 {
		return api.Job{}, api.Errorf(api.CodeBadRequest, "freeze timeout %d ms: want 0 (default) to 1 hour", r.FreezeTimeoutMS)
	}
	t, err := s.target(r.Target)
	if err != nil {
		return api.Job{}, err
	}
	if err := s.writable(); err != nil {
		return api.Job{}, err
	}
	name, uuid, err := s.domainID(r.Domain)
	if err != nil {
		return api.Job{}, coded(err)
	}
	r.Target = t.Name
	return s.submit(jobs.Spec{Kind: api.KindBackup, Domain: name, Key: uuid, Target: t.Name, Request: r, Retry: transient, Attempts: 5,
		Policy: x.policy, Parent: x.parent,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			return s.runBackup(ctx, h, t, uuid, r, x)
		}})
}

func (s *Service) runBackup(ctx context.Context, h *jobs.Handle, t Target, uuid string, r api.BackupRequest, x backupExtra) (*api.JobResult, error) {
	conn, err := s.libvirt()
	if err != nil {
		return nil, err
	}
	e := &backup.Driver{Conn: conn, State: s.state, Log: h.Log()}
	repo, err := s.openForBackup(ctx, t)
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	damaged, err := s.cat.Damaged(ctx, t.Name)
	if err != nil {
		return nil, err
	}
	res, err := e.Backup(ctx, backup.BackupRequest{Domain: uuid, Target: backup.Target{Name: t.Name, Repo: repo},
		Level: r.Level, Consistency: r.Consistency, RequireConsistency: r.RequireConsistency,
		FreezeTimeout: time.Duration(r.FreezeTimeoutMS) * time.Millisecond, Disks: r.Disks, Exclude: r.Exclude,
		PreFreeze: x.preFreeze, PostThaw: x.postThaw, Damaged: damaged, Progress: progressTo(h)})
	if err != nil {
		return nil, err
	}
	p := record(res.Manifest, t.Name)
	if err := s.cat.AddPoint(context.WithoutCancel(ctx), p); err != nil {
		// The point is in the repository, which is the truth: the next
		// reconcile finds it.
		h.Log().Error("point not recorded in the catalog", "point", p.ID, "err", err)
	}
	if p.Level == chain.LevelFull {
		if err := s.cat.SetLastRun(context.WithoutCancel(ctx), fullEntry(t.Name, uuid), p.Time); err != nil {
			h.Log().Error("full backup not recorded: the level plan takes the newest full point instead", "err", err)
		}
	}
	out := &api.JobResult{Point: &p, Warnings: res.Warnings}
	for _, d := range res.Disks {
		if d.FullReason != "" && res.Manifest.Level != chain.LevelFull {
			if out.FullReasons == nil {
				out.FullReasons = map[string]string{}
			}
			out.FullReasons[d.Disk] = d.FullReason
			h.Log().Warn("disk read in full", "disk", d.Disk, "reason", d.FullReason)
		}
	}
	h.Log().Info("backup done", "point", p.ID, "level", p.Level, "consistency", p.Consistency)
	return out, nil
}

// openForBackup opens t's repository, making one where there is none,
// unless the catalog knows points of t: then the repository is out of
// reach (a share not mounted, a bucket renamed), and a new one there would
// hide it when it comes back.
func (s *Service) openForBackup(ctx context.Context, t Target) (*target.Repository, error) {
	have, err := s.cat.PointIDs(ctx, t.Name)
	if err != nil {
		return nil, err
	}
	if len(have) == 0 {
		return s.open(ctx, t, true)
	}
	repo, err := s.open(ctx, t, false)
	if errors.Is(err, target.ErrNotRepository) {
		return nil, api.Errorf(api.CodeUnavailable, "target %s holds no repository, but the catalog knows %d points of it: is its storage mounted? (a catalog rebuild of the target forgets them): %w",
			t.Name, len(have), err)
	}
	return repo, err
}

// Restore queues a restore.
func (s *Service) Restore(ctx context.Context, r api.RestoreRequest) (api.Job, error) {
	switch {
	case r.Format != "" && r.Format != "raw" && r.Format != "qcow2":
		return api.Job{}, api.Errorf(api.CodeBadRequest, "format %q: want qcow2 or raw", r.Format)
	case r.To == "" && r.As == "" && !r.InPlace:
		return api.Job{}, api.Errorf(api.CodeBadRequest, "restore needs a directory (to), a new domain name (as) or in place")
	case r.InPlace && (r.To != "" || r.As != ""):
		return api.Job{}, api.Errorf(api.CodeBadRequest, "restore in place takes no directory or new name")
	case r.As != "" && len(r.Disks) > 0:
		return api.Job{}, api.Errorf(api.CodeBadRequest, "a restore as a new domain restores every disk: name no disks")
	}
	if r.As != "" {
		if err := checkDomainName("new domain name", r.As); err != nil {
			return api.Job{}, err
		}
	}
	if r.To != "" {
		if err := checkAbs("directory", r.To); err != nil {
			return api.Job{}, err
		}
	}
	if err := checkDisks(r.Disks); err != nil {
		return api.Job{}, err
	}
	p, t, err := s.resolveTarget(ctx, r.Point, r.Target)
	if err != nil {
		return api.Job{}, err
	}
	for _, d := range r.Disks {
		if err := pointDisk(p, d); err != nil {
			return api.Job{}, err
		}
	}
	if r.As != "" && r.To == "" {
		r.To = filepath.Join(s.cfg.StateDir, "images", r.As)
	}
	r.Point, r.Target = p.ID, t.Name
	key := ""
	if r.InPlace {
		key = p.DomainUUID // it writes the domain's own disks
	}
	return s.submit(jobs.Spec{Kind: api.KindRestore, Domain: p.Domain, Key: key, Target: t.Name, Request: r, Retry: transient,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			return s.runRestore(ctx, h, t, p, r)
		}})
}

// resolveTarget resolves a point and its target.
func (s *Service) resolveTarget(ctx context.Context, spec, only string) (api.Point, Target, error) {
	p, err := s.resolve(ctx, spec, only)
	if err != nil {
		return p, Target{}, err
	}
	t, err := s.target(p.Target)
	return p, t, err
}

func (s *Service) runRestore(ctx context.Context, h *jobs.Handle, t Target, p api.Point, r api.RestoreRequest) (*api.JobResult, error) {
	repo, err := s.open(ctx, t, false)
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	progress := progressTo(h)
	if r.InPlace || r.As != "" {
		conn, err := s.libvirt()
		if err != nil {
			return nil, err
		}
		e := &restore.Restorer{Conn: conn, Log: h.Log(), BootFileDirs: s.bootDirs}
		name := p.Domain
		if r.As != "" {
			name = r.As
		}
		uuid, err := e.Domain(ctx, repo, p.ID, restore.DomainRequest{Name: name, Dir: r.To, InPlace: r.InPlace, Force: r.Force,
			Format: r.Format, Verify: r.Verify, Progress: progress, Strict: r.Strict})
		if err != nil {
			return nil, err
		}
		h.Log().Info("domain restored", "domain", name, "uuid", uuid, "point", p.ID)
		return &api.JobResult{Point: &p, Domain: name, UUID: uuid, Dir: r.To}, nil
	}
	if err := statedir.MkdirTrusted(r.To); err != nil {
		return nil, coded(err)
	}
	files, err := s.restoreDisks(ctx, repo, p, r, progress)
	if err != nil {
		return nil, err
	}
	return &api.JobResult{Point: &p, Files: files}, nil
}

// restoreDisks restores the chosen disks of p into r.To, two at a time.
func (s *Service) restoreDisks(ctx context.Context, repo *target.Repository, p api.Point, r api.RestoreRequest, progress restore.Progress) ([]string, error) {
	type one struct{ disk, dst, format string }
	var todo []one
	for _, d := range p.Disks {
		if len(r.Disks) > 0 && !slices.Contains(r.Disks, d.Name) {
			continue
		}
		f := r.Format
		if f == "" {
			f = d.Format
		}
		dst, err := restore.Path(r.To, d.Name, f)
		if err != nil {
			return nil, err
		}
		todo = append(todo, one{d.Name, dst, f})
	}
	errs := make(chan error, len(todo))
	sem := make(chan struct{}, 2)
	for _, j := range todo {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs <- restore.Disk(ctx, repo, p.ID, j.disk, j.dst, restore.Options{Format: j.format, Force: r.Force, Verify: r.Verify, Progress: progress})
		}()
	}
	var first error
	for range todo {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return nil, first
	}
	files := make([]string, len(todo))
	for i, j := range todo {
		files[i] = j.dst
	}
	return files, nil
}

// Export queues writing one disk to a file or device.
func (s *Service) Export(ctx context.Context, r api.ExportRequest) (api.Job, error) {
	if r.Disk == "" || r.Output == "" || (r.Format != "raw" && r.Format != "qcow2") {
		return api.Job{}, api.Errorf(api.CodeBadRequest, "export needs a disk, a format (qcow2 or raw) and an output file")
	}
	if err := checkAbs("output", r.Output); err != nil {
		return api.Job{}, err
	}
	p, t, err := s.resolveTarget(ctx, r.Point, r.Target)
	if err != nil {
		return api.Job{}, err
	}
	if err := pointDisk(p, r.Disk); err != nil {
		return api.Job{}, err
	}
	r.Point, r.Target = p.ID, t.Name
	return s.submit(jobs.Spec{Kind: api.KindExport, Domain: p.Domain, Target: t.Name, Request: r, Retry: transient,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			repo, err := s.open(ctx, t, false)
			if err != nil {
				return nil, err
			}
			defer repo.Close()
			err = restore.Disk(ctx, repo, p.ID, r.Disk, r.Output, restore.Options{Format: r.Format, Force: r.Force, Progress: progressTo(h)})
			if err != nil {
				return nil, err
			}
			return &api.JobResult{Files: []string{r.Output}}, nil
		}})
}

// ErrDamage is the error of a verify that found damage.
var ErrDamage = errors.New("damage found")

// Verify queues a check of one point or of whole repositories.
func (s *Service) Verify(ctx context.Context, r api.VerifyRequest) (api.Job, error) {
	if r.All == (r.Point != "") {
		return api.Job{}, api.Errorf(api.CodeBadRequest, "verify needs a point or all")
	}
	if r.Sample < 0 || r.Sample > 366 || r.Sample > 1 && (!r.All || !r.ReadData) {
		return api.Job{}, api.Errorf(api.CodeBadRequest, "sample %d: want 1-366 parts, with all and read data", r.Sample)
	}
	if r.All {
		ts, err := s.targets(r.Target)
		if err != nil {
			return api.Job{}, err
		}
		return s.submit(jobs.Spec{Kind: api.KindVerify, Target: r.Target, Request: r,
			Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
				return s.verifyAll(ctx, h, ts, r.ReadData, r.Sample)
			}})
	}
	p, t, err := s.resolveTarget(ctx, r.Point, r.Target)
	if err != nil {
		return api.Job{}, err
	}
	r.Point, r.Target = p.ID, t.Name
	return s.submit(jobs.Spec{Kind: api.KindVerify, Domain: p.Domain, Target: t.Name, Request: r,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			err := s.verifyPoint(ctx, h, t, p, r.ReadData)
			if err != nil && (errors.Is(err, target.ErrCorrupt) || errors.Is(err, target.ErrNotFound)) {
				s.markDamaged(ctx, h, t.Name, map[string]string{p.ID: err.Error()}, false)
			}
			return &api.JobResult{Point: &p}, err
		}})
}

func (s *Service) verifyPoint(ctx context.Context, h *jobs.Handle, t Target, p api.Point, readData bool) error {
	repo, err := s.open(ctx, t, false)
	if err != nil {
		return err
	}
	defer repo.Close()
	for _, d := range p.Disks {
		r, err := repo.OpenDisk(ctx, p.ID, d.Name)
		if err != nil {
			return fmt.Errorf("point %s: %w", p.ID, err)
		}
		if !readData {
			if err := r.Allocated(ctx, 0, r.Size(), func(int64, int64, bool) error { return nil }); err != nil {
				return fmt.Errorf("point %s: %w", p.ID, err)
			}
			continue
		}
		buf := make([]byte, 8<<20)
		for off := int64(0); off < r.Size(); off += int64(len(buf)) {
			n := min(int64(len(buf)), r.Size()-off)
			if err := r.ReadAt(ctx, buf[:n], off); err != nil {
				return fmt.Errorf("point %s: %w", p.ID, err)
			}
			h.Progress(d.Name, off+n, r.Size())
		}
	}
	h.Log().Info("point ok", "point", p.ID, "read_data", readData)
	return nil
}

func (s *Service) verifyAll(ctx context.Context, h *jobs.Handle, ts []Target, readData bool, sample int) (*api.JobResult, error) {
	res := &api.JobResult{Checks: map[string]api.CheckReport{}}
	opts := target.CheckOptions{ReadData: readData, Quarantine: readData}
	if sample > 1 {
		day := int(s.cfg.Clock().Unix() / 86400)
		opts.Sample = target.Sample{Part: day % sample, Of: sample}
		h.Log().Info("reading a sample of the chunks", "part", opts.Sample.Part+1, "of", sample)
	}
	bad := false
	for _, t := range ts {
		repo, err := s.open(ctx, t, false)
		if errors.Is(err, target.ErrNotRepository) {
			continue
		}
		if err != nil {
			return res, err
		}
		rep, err := repo.Check(ctx, opts)
		repo.Close()
		if err != nil {
			return res, fmt.Errorf("target %s: %w", t.Name, err)
		}
		res.Checks[t.Name] = api.CheckReport{OK: rep.OK(), Summary: rep.String(), Report: rep}
		bad = bad || !rep.OK()
		h.Log().Info("target checked", "target", t.Name, "report", rep.String())
		damaged := map[string]string{}
		for _, p := range rep.Problems {
			for _, id := range p.IDs {
				damaged[id] = p.Object + ": " + p.Error
			}
		}
		s.markDamaged(ctx, h, t.Name, damaged, readData && sample <= 1)
	}
	if bad {
		return res, ErrDamage
	}
	return res, nil
}

// markDamaged records what verification found; with whole (every chunk
// read), earlier findings of the target's other points are cleared.
func (s *Service) markDamaged(ctx context.Context, h *jobs.Handle, t string, damaged map[string]string, whole bool) {
	for id, p := range damaged {
		h.Log().Error("point damaged: it will not be the base of an incremental", "target", t, "point", id, "problem", p)
	}
	if err := s.cat.MarkDamaged(context.WithoutCancel(ctx), t, damaged, whole, s.cfg.Clock()); err != nil {
		h.Log().Error("damage not recorded in the catalog", "err", err)
	}
}

// RebuildCatalog queues reading every manifest of the targets again.
func (s *Service) RebuildCatalog(ctx context.Context, r api.RebuildRequest) (api.Job, error) {
	ts, err := s.targets(r.Target)
	if err != nil {
		return api.Job{}, err
	}
	return s.submit(jobs.Spec{Kind: api.KindRebuild, Target: r.Target, Request: r,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			res := &api.JobResult{Points: map[string]int{}}
			var failed []error
			for _, t := range ts {
				if err := s.Reconcile(ctx, t.Name, true); err != nil {
					h.Log().Error("target not rebuilt", "target", t.Name, "err", err)
					failed = append(failed, fmt.Errorf("target %s: %w", t.Name, err))
					continue
				}
				ps, err := s.cat.Points(ctx, catalog.Query{Target: t.Name})
				if err != nil {
					return res, err
				}
				res.Points[t.Name] = len(ps)
				h.Log().Info("target rebuilt", "target", t.Name, "points", len(ps))
			}
			return res, errors.Join(failed...)
		}})
}
