package service

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/jobs"
	"github.com/virtkeep/virtkeep/hostd/policy"
	"github.com/virtkeep/virtkeep/target"
)

// Copy queues copying points to another target.
func (s *Service) Copy(ctx context.Context, r api.CopyRequest) (api.Job, error) {
	return s.copyJob(ctx, r, "", "")
}

func (s *Service) copyJob(ctx context.Context, r api.CopyRequest, pol, parent string) (api.Job, error) {
	if len(r.Points) == 0 || len(r.Points) > 1000 {
		return api.Job{}, api.Errorf(api.CodeBadRequest, "copy needs 1 to 1000 points (got %d)", len(r.Points))
	}
	to, err := s.target(r.To)
	if err != nil || r.To == "" {
		return api.Job{}, api.Errorf(api.CodeBadRequest, "copy needs a destination target (--to): %v", err)
	}
	type one struct {
		p    api.Point
		from Target
	}
	var todo []one
	for _, spec := range r.Points {
		p, from, err := s.resolveTarget(ctx, spec, r.From)
		if err != nil {
			return api.Job{}, err
		}
		if from.Name == to.Name {
			return api.Job{}, api.Errorf(api.CodeBadRequest, "point %s is in target %s already: name another with --to", p.ID, to.Name)
		}
		todo = append(todo, one{p, from})
	}
	domain := ""
	if len(todo) == 1 {
		domain = todo[0].p.Domain
	}
	return s.submit(jobs.Spec{Kind: api.KindCopy, Domain: domain, Target: to.Name, Request: r, Retry: transient, Attempts: 6,
		Policy: pol, Parent: parent,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			res := &api.JobResult{}
			for _, o := range todo {
				rep, err := s.copyPoint(ctx, h, o.p, o.from, to)
				if err != nil {
					return res, err
				}
				res.Copies = append(res.Copies, rep)
			}
			return res, nil
		}})
}

// copyPoint copies one point. Failures to reach either repository are
// transient (the job retries, and a retry moves only what is missing).
func (s *Service) copyPoint(ctx context.Context, h *jobs.Handle, p api.Point, from, to Target) (api.CopyReport, error) {
	rep := api.CopyReport{Point: p.ID, From: from.Name, To: to.Name}
	src, err := s.open(ctx, from, false)
	if err != nil {
		return rep, err
	}
	defer src.Close()
	dst, err := s.openForBackup(ctx, to)
	if err != nil {
		return rep, err
	}
	defer dst.Close()
	m, st, err := target.Copy(ctx, src, dst, p.ID, target.CopyOptions{Progress: h.Progress})
	rep.Chunks, rep.ChunksNew, rep.BytesStored, rep.Existed = st.Chunks, st.ChunksNew, st.BytesStored, st.Existed
	if err != nil {
		if ctx.Err() == nil {
			return rep, targetError(err)
		}
		return rep, err
	}
	cp := record(m, to.Name)
	if err := s.cat.AddPoint(context.WithoutCancel(ctx), cp); err != nil {
		h.Log().Error("point not recorded in the catalog", "point", cp.ID, "target", to.Name, "err", err)
	}
	h.Log().Info("point copied", "point", p.ID, "from", from.Name, "to", to.Name, "chunks", st.Chunks, "chunks_new", st.ChunksNew,
		"bytes_stored", st.BytesStored, "existed", st.Existed)
	return rep, nil
}

// Prune queues pruning targets per the policies' retention.
func (s *Service) Prune(ctx context.Context, r api.PruneRequest) (api.Job, error) {
	ts, err := s.targets(r.Target)
	if err != nil {
		return api.Job{}, err
	}
	if r.Domain != "" {
		if err := checkDomainName("domain", r.Domain); err != nil {
			return api.Job{}, err
		}
	}
	a, aerr := s.assign()
	if aerr != nil {
		s.log.Warn("libvirt's domains unknown: only domains the policies name or match are pruned", "err", aerr)
	}
	return s.pruneJob(ts, r, func(t string) func(string) (*target.Retention, string) { return s.rulesFor(t, a, r.Domain) }, "", "")
}

// pruneJob queues a prune of ts, each by its rules; it runs alone on its
// target (one target: on that one; several: on every one).
func (s *Service) pruneJob(ts []Target, r api.PruneRequest, rules func(target string) func(string) (*target.Retention, string), pol, parent string) (api.Job, error) {
	name := r.Target
	if len(ts) == 1 {
		name = ts[0].Name
	}
	return s.submit(jobs.Spec{Kind: api.KindPrune, Domain: r.Domain, Target: name, Request: r, Exclusive: true, Policy: pol, Parent: parent,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			res := &api.JobResult{}
			var failed []error
			for _, t := range ts {
				decs, err := s.pruneTarget(ctx, h, t, rules(t.Name), r.Hosts, r.DryRun)
				res.Decisions = append(res.Decisions, decs...)
				if err != nil {
					failed = append(failed, fmt.Errorf("target %s: %w", t.Name, err))
				}
			}
			return res, errors.Join(failed...)
		}})
}

// rulesFor gives each domain of target t the retention of its policy (by
// the assignment, or by name for a domain libvirt no longer has); only
// is a domain to prune alone.
func (s *Service) rulesFor(t string, a assignment, only string) func(string) (*target.Retention, string) {
	return func(d string) (*target.Retention, string) {
		if only != "" && d != only {
			return nil, ""
		}
		for _, p := range s.policies() {
			if !slices.ContainsFunc(a.domains[p.Name], func(r domainRef) bool { return r.name == d }) && !p.Selects(d, false) {
				continue
			}
			if r, ok := p.Retention[t]; ok {
				return &r, p.Name
			}
			return nil, ""
		}
		return nil, ""
	}
}

// policyPrune prunes, after a run, the run's domains in each target p
// has retention for, a prune job per target. A failure is logged: the
// points stay until the next run.
func (s *Service) policyPrune(ctx context.Context, h *jobs.Handle, p *policy.Policy, doms []domainRef, ids *[]string) []api.Decision {
	var out []api.Decision
	for _, tn := range append(slices.Clone(p.Targets), p.CopyTo...) {
		r, ok := p.Retention[tn]
		if !ok {
			continue
		}
		t, err := s.target(tn)
		if err != nil {
			continue
		}
		rules := func(string) func(string) (*target.Retention, string) {
			return func(d string) (*target.Retention, string) {
				if slices.ContainsFunc(doms, func(x domainRef) bool { return x.name == d }) {
					return &r, p.Name
				}
				return nil, ""
			}
		}
		j, err := s.child(ctx, ids)(s.pruneJob([]Target{t}, api.PruneRequest{Target: tn}, rules, p.Name, h.ID()))
		if err != nil {
			h.Log().Error("prune failed: the points stay until the next run", "target", tn, "err", err)
		}
		if j.Result != nil {
			out = append(out, j.Result.Decisions...)
		}
	}
	return out
}

// pruneTarget prunes one target, waiting while other writers hold it.
func (s *Service) pruneTarget(ctx context.Context, h *jobs.Handle, t Target, rules func(string) (*target.Retention, string), hosts []string, dryRun bool) ([]api.Decision, error) {
	repo, err := s.open(ctx, t, false)
	if errors.Is(err, target.ErrNotRepository) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	policyOf := map[string]string{}
	var decs []target.Decision
	err = waitLocked(ctx, h, func() error {
		decs, err = repo.PruneBy(ctx, func(newest *target.Manifest) *target.Retention {
			r, p := rules(newest.Domain)
			policyOf[newest.ChainKey()] = p
			return r
		}, pruneScope(repo.Identity(), hosts), dryRun)
		return err
	})
	var out []api.Decision
	var gone []string
	for _, d := range decs {
		key := target.ChainKey(d.DomainUUID, d.Domain)
		out = append(out, api.Decision{Target: t.Name, Point: d.ID, Domain: d.Domain, DomainUUID: d.DomainUUID, Host: d.Host,
			Time: d.Time, Keep: d.Keep, Reasons: d.Reasons, Policy: policyOf[key]})
		if !d.Keep && !dryRun {
			gone = append(gone, d.ID)
		}
	}
	if len(gone) > 0 {
		if serr := s.cat.Sync(context.WithoutCancel(ctx), t.Name, nil, gone, false, s.cfg.Clock()); serr != nil {
			h.Log().Error("pruned points not removed from the catalog: the next reconcile does", "err", serr)
		}
		h.Log().Info("pruned", "target", t.Name, "removed", len(gone), "kept", len(out)-len(gone))
	}
	return out, err
}

// pruneScope is the points a prune of this host looks at: those it wrote
// (this machine's, not another's of the same host name), and those of the
// hosts named ("*": all).
func pruneScope(self target.Identity, named []string) target.PruneScope {
	if slices.Contains(named, "*") {
		return target.PruneScope{}
	}
	return target.PruneScope{Self: &self, Hosts: named}
}

// waitLocked runs fn again while it fails because another process holds
// the repository (a backup's shared lock), for up to 10 minutes.
func waitLocked(ctx context.Context, h *jobs.Handle, fn func() error) error {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		err := fn()
		if !errors.Is(err, target.ErrLocked) || time.Now().After(deadline) {
			return err
		}
		h.Log().Info("repository in use: waiting", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// Protect marks a point protected or not.
func (s *Service) Protect(ctx context.Context, r api.ProtectRequest) error {
	if err := s.writable(); err != nil {
		return err
	}
	p, t, err := s.resolveTarget(ctx, r.Point, r.Target)
	if err != nil {
		return err
	}
	repo, err := s.open(ctx, t, false)
	if err != nil {
		return err
	}
	defer repo.Close()
	return coded(repo.Protect(ctx, p.ID, !r.Off))
}

// GC queues garbage collection of targets.
func (s *Service) GC(ctx context.Context, r api.GCRequest) (api.Job, error) {
	ts, err := s.targets(r.Target)
	if err != nil {
		return api.Job{}, err
	}
	return s.submit(jobs.Spec{Kind: api.KindGC, Target: r.Target, Request: r, Exclusive: true,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			res := &api.JobResult{GC: map[string]api.GCReport{}}
			for _, t := range ts {
				repo, err := s.open(ctx, t, false)
				if errors.Is(err, target.ErrNotRepository) {
					continue
				}
				if err != nil {
					return res, err
				}
				var st target.GCStats
				err = waitLocked(ctx, h, func() (err error) {
					st, err = repo.GC(ctx, target.GCOptions{DryRun: r.DryRun, Grace: s.cfg.GCGrace})
					return err
				})
				repo.Close()
				if err != nil {
					return res, fmt.Errorf("target %s: %w", t.Name, err)
				}
				res.GC[t.Name] = api.GCReport{Deleted: st.Deleted, BytesFreed: st.BytesFreed, KeptYoung: st.KeptYoung, BytesKept: st.BytesKept, Repacked: st.Repacked}
				h.Log().Info("garbage collected", "target", t.Name, "deleted", st.Deleted, "bytes_freed", st.BytesFreed, "dry_run", r.DryRun)
			}
			return res, nil
		}})
}
