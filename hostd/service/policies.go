package service

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/catalog"
	"github.com/virtkeep/virtkeep/hostd/jobs"
	"github.com/virtkeep/virtkeep/hostd/policy"
	"github.com/virtkeep/virtkeep/hostd/schedule"
	"github.com/virtkeep/virtkeep/target"
)

// PolicyEntry is the scheduler entry of policy name.
func PolicyEntry(name string) string { return "policy/" + name }

// PolicyEntries are the scheduler entries of the policies.
func (s *Service) PolicyEntries(last map[string]time.Time) []schedule.Entry {
	var out []schedule.Entry
	for _, p := range s.policies() {
		out = append(out, policyEntry(p, last))
	}
	return out
}

// policyEntry is p's scheduler entry, last run as last records it.
func policyEntry(p *policy.Policy, last map[string]time.Time) schedule.Entry {
	n := PolicyEntry(p.Name)
	return schedule.Entry{Name: n, Crons: p.Schedules, Jitter: p.Jitter, Last: last[n]}
}

// policies are the policies in force.
func (s *Service) policies() []*policy.Policy {
	s.polMu.RLock()
	defer s.polMu.RUnlock()
	return s.pols
}

// SetPolicies replaces the policies (a configuration reload); runs going
// on finish with the policy they started with.
func (s *Service) SetPolicies(ps []*policy.Policy) {
	s.polMu.Lock()
	s.pols = ps
	s.polMu.Unlock()
}

// RecordRun records that a scheduler entry ran at t; LastRuns reads them.
func (s *Service) RecordRun(ctx context.Context, entry string, t time.Time) error {
	return s.cat.SetLastRun(ctx, entry, t)
}

// LastRuns is when each scheduler entry last ran.
func (s *Service) LastRuns(ctx context.Context) (map[string]time.Time, error) {
	return s.cat.LastRuns(ctx)
}

// Targets are the configured targets.
func (s *Service) Targets() []Target { return slices.Clone(s.targetList()) }

// targetList is the configured targets, not to be changed: SetUpkeep
// replaces the slice, never what is in it.
func (s *Service) targetList() []Target {
	s.polMu.RLock()
	defer s.polMu.RUnlock()
	return s.cfg.Targets
}

func (s *Service) policy(name string) (*policy.Policy, error) {
	var names []string
	for _, p := range s.policies() {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	if len(names) == 0 {
		return nil, api.Errorf(api.CodeNotFound, "no policy %q: none is configured (policies: in the configuration)", name)
	}
	return nil, api.Errorf(api.CodeNotFound, "no policy %q (configured: %s)", name, strings.Join(names, ", "))
}

// domainRef is a libvirt domain as policies see it.
type domainRef struct{ name, uuid string }

// assignment is which domains each policy has now, and what is wrong.
type assignment struct {
	domains  map[string][]domainRef // policy -> its domains, by name
	problems map[string][]problem   // policy -> what it cannot back up
}

// problem is a domain a policy cannot back up, and why.
type problem struct{ domain, why string }

func whys(ps []problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.why)
	}
	return out
}

// assign lists libvirt's domains and gives each its policy.
func (s *Service) assign() (assignment, error) {
	a := assignment{domains: map[string][]domainRef{}, problems: map[string][]problem{}}
	conn, err := s.libvirt()
	if err != nil {
		return a, err
	}
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		return a, api.WithCode(api.CodeUnavailable, fmt.Errorf("list domains: %w", err))
	}
	refs := map[string]domainRef{}
	optIn := map[string][]string{}
	var names []string
	for _, d := range doms {
		n, err1 := d.GetName()
		u, err2 := d.GetUUIDString()
		if err1 == nil && err2 == nil {
			refs[n] = domainRef{n, u}
			names = append(names, n)
			optIn[n] = optedIn(&d)
		}
		d.Free()
	}
	sort.Strings(names)
	got, overlaps := policy.Assign(s.policies(), names, func(d string) []string { return optIn[d] })
	for _, n := range names {
		if p := got[n]; p != nil {
			a.domains[p.Name] = append(a.domains[p.Name], refs[n])
		}
	}
	for _, o := range overlaps {
		a.problems[o.A] = append(a.problems[o.A], problem{o.Domain, o.Error()})
		a.problems[o.B] = append(a.problems[o.B], problem{o.Domain, o.Error()})
	}
	for _, p := range s.policies() {
		for _, d := range p.Domains {
			if !strings.ContainsAny(d, "*?[") && refs[d] == (domainRef{}) {
				a.problems[p.Name] = append(a.problems[p.Name], problem{d, fmt.Sprintf("domain %s is not defined in libvirt", d)})
			}
		}
	}
	return a, nil
}

// optedIn reads the policies a domain's metadata names:
// <virtkeep:policy xmlns:virtkeep="https://virtkeep.org/xmlns/policy/1">NAME[,NAME]</virtkeep:policy>.
func optedIn(d *libvirt.Domain) []string {
	md, err := d.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, policy.MetadataNS, libvirt.DOMAIN_AFFECT_CONFIG)
	if err != nil || len(md) > 4096 {
		return nil
	}
	var v struct {
		Text string `xml:",chardata"`
	}
	if xml.Unmarshal([]byte(md), &v) != nil {
		return nil
	}
	return strings.FieldsFunc(v.Text, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' })
}

// Policies lists the policies with their domains, next run and last run.
func (s *Service) Policies(ctx context.Context) ([]api.PolicyInfo, error) {
	a, aerr := s.assign()
	last, err := s.cat.LastRuns(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.PolicyInfo{}
	for _, p := range s.policies() {
		pi := api.PolicyInfo{Name: p.Name, Domains: []string{}, Problems: whys(a.problems[p.Name]), Level: p.Level, Full: p.Full.String(),
			Targets: p.Targets, CopyTo: p.CopyTo}
		if pi.Level == "" {
			pi.Level = "auto"
		}
		for _, c := range p.Schedules {
			pi.Schedules = append(pi.Schedules, c.String())
		}
		for _, d := range a.domains[p.Name] {
			pi.Domains = append(pi.Domains, d.name)
		}
		if aerr != nil {
			pi.Problems = append(pi.Problems, aerr.Error())
		}
		pi.Next = policyEntry(p, last).NextAfter(s.cfg.Clock())
		if j, err := s.cat.LastJob(ctx, p.Name, api.KindPolicy); err == nil {
			pi.Last = &j
		} else if !errors.Is(err, catalog.ErrNotFound) {
			return nil, err
		}
		out = append(out, pi)
	}
	return out, nil
}

// RunPolicy starts a run of a policy now: a job that backs up each of its
// domains (Concurrency at once) into each of its targets, copies the
// points to its copy targets, then prunes every target it has retention
// for. A policy has one run at a time.
func (s *Service) RunPolicy(ctx context.Context, r api.RunRequest) (api.Job, error) {
	p, err := s.policy(r.Policy)
	if err != nil {
		return api.Job{}, err
	}
	if r.Domain != "" {
		if err := checkDomainName("domain", r.Domain); err != nil {
			return api.Job{}, err
		}
		if !p.Selects(r.Domain, true) {
			return api.Job{}, api.Errorf(api.CodeBadRequest, "policy %s does not select domain %s", p.Name, r.Domain)
		}
	}
	return s.submit(jobs.Spec{Kind: api.KindPolicy, Domain: r.Domain, Key: PolicyEntry(p.Name), Policy: p.Name, Request: r, Unlimited: true,
		Run: func(ctx context.Context, h *jobs.Handle) (*api.JobResult, error) {
			return s.runPolicy(ctx, h, p, r)
		}})
}

// PolicyRunning reports whether a run of policy name is queued or running.
func (s *Service) PolicyRunning(name string) bool {
	for _, j := range s.jobs.Live() {
		if j.Kind == api.KindPolicy && j.Policy == name {
			return true
		}
	}
	return false
}

func (s *Service) runPolicy(ctx context.Context, h *jobs.Handle, p *policy.Policy, r api.RunRequest) (*api.JobResult, error) {
	if r.Missed > 0 {
		h.Log().Info("catching up once for the runs missed while virtkeepd was down", "missed", r.Missed)
	}
	a, err := s.assign()
	if err != nil {
		return nil, err
	}
	rep := &api.RunReport{Domains: map[string]string{}, Jobs: []string{}}
	res := &api.JobResult{Run: rep}
	var mu sync.Mutex
	set := func(d, v string, ids ...string) {
		mu.Lock()
		rep.Domains[d] = v
		rep.Jobs = append(rep.Jobs, ids...)
		mu.Unlock()
	}
	doms := a.domains[p.Name]
	if r.Domain != "" {
		doms = slices.DeleteFunc(slices.Clone(doms), func(d domainRef) bool { return d.name != r.Domain && d.uuid != r.Domain })
		if len(doms) == 0 {
			return res, api.Errorf(api.CodeNotFound, "policy %s: domain %s is not defined or is in another policy too", p.Name, r.Domain)
		}
	} else {
		for _, pr := range a.problems[p.Name] {
			h.Log().Error("policy problem", "domain", pr.domain, "problem", pr.why)
			set(pr.domain, pr.why)
		}
	}
	sem := make(chan struct{}, max(1, p.Concurrency))
	var wg sync.WaitGroup
	for _, d := range doms {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ids, err := s.policyDomain(ctx, h, p, d)
			if err != nil {
				h.Log().Error("domain not backed up", "domain", d.name, "err", err)
				set(d.name, err.Error(), ids...)
				return
			}
			set(d.name, "ok", ids...)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.Decisions = s.policyPrune(ctx, h, p, doms, &rep.Jobs)
	return res, runFailure(rep)
}

// runFailure is the error of a run some of whose domains failed.
func runFailure(rep *api.RunReport) error {
	var bad []string
	for _, d := range slices.Sorted(maps.Keys(rep.Domains)) {
		if rep.Domains[d] != "ok" {
			bad = append(bad, d+": "+rep.Domains[d])
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d domains failed: %s", len(bad), len(rep.Domains), strings.Join(bad, "; "))
}

// policyDomain backs d up into each of p's targets, then copies the first
// target's point to each copy target. It returns the jobs it ran.
func (s *Service) policyDomain(ctx context.Context, h *jobs.Handle, p *policy.Policy, d domainRef) ([]string, error) {
	var ids []string
	var first *api.Point
	for _, t := range p.Targets {
		level, why, err := s.levelFor(ctx, p, t, d.uuid)
		if err != nil {
			return ids, err
		}
		if why != "" {
			h.Log().Info("taking a full backup", "domain", d.name, "target", t, "reason", why)
		}
		r := api.BackupRequest{Domain: d.uuid, Target: t, Level: level, Consistency: p.Consistency, RequireConsistency: p.RequireConsistency,
			FreezeTimeoutMS: p.FreezeTimeout.Milliseconds(), Disks: p.Disks, Exclude: p.Exclude}
		j, err := s.child(ctx, &ids)(s.backup(ctx, r, backupExtra{preFreeze: agentHooks(p.PreFreeze), postThaw: agentHooks(p.PostThaw), policy: p.Name, parent: h.ID()}))
		if err != nil {
			return ids, fmt.Errorf("backup into %s: %w", t, err)
		}
		if first == nil && j.Result != nil {
			first = j.Result.Point
		}
	}
	for _, to := range p.CopyTo {
		if first == nil {
			break
		}
		_, err := s.child(ctx, &ids)(s.copyJob(ctx, api.CopyRequest{Points: []string{first.ID}, From: first.Target, To: to}, p.Name, h.ID()))
		if err != nil {
			return ids, fmt.Errorf("copy to %s: %w", to, err)
		}
	}
	return ids, nil
}

func agentHooks(hs []policy.Hook) []guestagent.Hook {
	out := make([]guestagent.Hook, len(hs))
	for i, h := range hs {
		out[i] = guestagent.Hook{Path: h.Path, Args: h.Args, Timeout: h.Timeout}
	}
	return out
}

// child waits for a job a policy run submitted and returns its final
// state, or why it did not succeed. A cancelled run cancels it.
func (s *Service) child(ctx context.Context, ids *[]string) func(api.Job, error) (api.Job, error) {
	return func(j api.Job, err error) (api.Job, error) {
		if err != nil {
			return j, err
		}
		*ids = append(*ids, j.ID)
		final, err := s.jobs.Wait(ctx, j.ID)
		if err != nil {
			_, _ = s.jobs.Cancel(j.ID)
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_, _ = s.jobs.Wait(wctx, j.ID)
			return final, err
		}
		if final.State != api.Succeeded {
			return final, api.WithCode(final.ErrorCode, fmt.Errorf("job %s %s: %s", final.ID, final.State, final.Error))
		}
		return final, nil
	}
}

// levelFor is the level p's plan gives the next backup of domain uuid
// into t, and why a full when it is one. The last full is the last one
// taken (recorded when it succeeds, so pruning it does not bring the next
// one forward), else the newest undamaged full the catalog has.
func (s *Service) levelFor(ctx context.Context, p *policy.Policy, t, uuid string) (string, string, error) {
	lastFull, err := s.cat.LastRun(ctx, fullEntry(t, uuid))
	if err != nil {
		return "", "", err
	}
	if lastFull.IsZero() {
		pts, err := s.cat.Points(ctx, catalog.Query{Target: t, Domain: uuid})
		if err != nil {
			return "", "", err
		}
		for _, pt := range pts {
			if pt.Level == target.LevelFull && pt.Damaged == "" {
				lastFull = pt.Time
			}
		}
	}
	level, why := p.LevelAt(s.cfg.Clock(), lastFull)
	return level, why, nil
}

// fullEntry names the record of a domain's last full backup into a target.
func fullEntry(t, uuid string) string { return "full/" + t + "/" + uuid }

// PointStats sums up the catalog's points per target and domain.
func (s *Service) PointStats(ctx context.Context) ([]catalog.PointStat, error) {
	return s.cat.PointStats(ctx)
}

// SetUpkeep takes the GC and verify schedules of the targets ts names
// (a reload) and returns the targets added or removed, which only a
// restart applies (as it does any other change to a target's settings).
func (s *Service) SetUpkeep(ts []Target) []string {
	s.polMu.Lock()
	defer s.polMu.Unlock()
	var changed []string
	byName := map[string]Target{}
	for _, t := range ts {
		byName[t.Name] = t
	}
	// Copy on write: readers (targetList) keep the slice they were given.
	next := slices.Clone(s.cfg.Targets)
	defer func() { s.cfg.Targets = next }()
	for i := range next {
		cur := &next[i]
		n, ok := byName[cur.Name]
		if !ok {
			changed = append(changed, cur.Name+" (removed)")
			continue
		}
		cur.GC, cur.Verify, cur.VerifyReadData, cur.VerifySample = n.GC, n.Verify, n.VerifyReadData, n.VerifySample
		delete(byName, cur.Name)
	}
	for n := range byName {
		changed = append(changed, n+" (added)")
	}
	slices.Sort(changed)
	return changed
}
