package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/catalog"
	"github.com/virtkeep/virtkeep/hostd/jobs"
	"github.com/virtkeep/virtkeep/hostd/restore"
	"github.com/virtkeep/virtkeep/hostd/virt"
)

func checkJobID(id string) error {
	if !jobIDRe.MatchString(id) {
		return api.Errorf(api.CodeBadRequest, "job ID %q: want YYYYMMDDTHHMMSSZ-xxxxxxxx", id)
	}
	return nil
}

// Jobs lists jobs: the live ones as they are now, the rest as recorded.
func (s *Service) Jobs(ctx context.Context, r api.JobsRequest) ([]api.Job, error) {
	if r.Domain != "" {
		if err := checkDomainName("domain", r.Domain); err != nil {
			return nil, err
		}
	}
	q := catalog.JobQuery{Domain: r.Domain, CreatedAfter: r.Since}
	if !r.All {
		q.EndedAfter = s.cfg.Clock().Add(-24 * time.Hour)
	}
	rec, err := s.cat.Jobs(ctx, q)
	if err != nil {
		return nil, err
	}
	for i, j := range rec {
		if live, ok := s.jobs.Get(j.ID); ok {
			rec[i] = live
		}
	}
	sort.SliceStable(rec, func(i, j int) bool { return rec[i].Created.Before(rec[j].Created) })
	return rec, nil
}

// Job returns one job.
func (s *Service) Job(ctx context.Context, id string) (api.Job, error) {
	if err := checkJobID(id); err != nil {
		return api.Job{}, err
	}
	if j, ok := s.jobs.Get(id); ok {
		return j, nil
	}
	j, err := s.cat.Job(ctx, id)
	if errors.Is(err, catalog.ErrNotFound) {
		return api.Job{}, api.Errorf(api.CodeNotFound, "no job %s", id)
	}
	return j, err
}

// CancelJob cancels a queued or running job.
func (s *Service) CancelJob(ctx context.Context, id string) (api.Job, error) {
	j, err := s.Job(ctx, id)
	if err != nil {
		return j, err
	}
	if j.State.Ended() {
		return j, api.Errorf(api.CodeBadRequest, "job %s has ended already (%s)", id, j.State)
	}
	j, err = s.jobs.Cancel(id)
	if err != nil {
		// Recorded as running by a process that is not this one.
		return j, api.Errorf(api.CodeNotFound, "job %s is not run by this %s", id, s.cfg.Mode)
	}
	return j, nil
}

// Watch follows a job until it ends.
func (s *Service) Watch(ctx context.Context, id string, fn func(api.Job) error) error {
	j, err := s.Job(ctx, id)
	if err != nil {
		return err
	}
	if !j.State.Ended() {
		err := s.jobs.Watch(ctx, id, 250*time.Millisecond, fn)
		if !errors.Is(err, jobs.ErrNotLive) {
			return err
		}
		// It ended between the two looks.
		if j, err = s.Job(ctx, id); err != nil {
			return err
		}
	}
	return fn(j)
}

// Log sends a job's log lines; with follow it waits for more until the
// job has ended.
func (s *Service) Log(ctx context.Context, id string, follow bool, fn func(api.LogLine) error) error {
	if _, err := s.Job(ctx, id); err != nil {
		return err
	}
	var seq int64
	for {
		changed := s.jobs.Changed(id) // before reading: no line is missed
		lines, err := s.cat.Logs(ctx, id, seq)
		if err != nil {
			return err
		}
		for _, l := range lines {
			if err := fn(l); err != nil {
				return err
			}
			seq = l.Seq
		}
		// Not live when looked at before the read: every line was in.
		if !follow || changed == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-time.After(time.Second):
		}
	}
}

// failInterrupted marks failed, with the reason, the jobs recorded as
// queued or running: jobs run only under the host lock, which this
// process has just taken, so whoever recorded them is gone. It returns
// them.
func (s *Service) failInterrupted(ctx context.Context) ([]api.Job, error) {
	un, err := s.cat.UnfinishedJobs(ctx)
	if err != nil {
		return nil, err
	}
	var out []api.Job
	for _, u := range un {
		j := u.Job
		j.State, j.Ended, j.ErrorCode = api.Failed, time.Now().UTC(), api.CodeFailed
		j.Error = "interrupted: the virtkeep process running it (pid " + strconv.Itoa(u.Holder) + ") stopped before it ended"
		if err := s.cat.SaveJob(ctx, j, u.Holder, nil); err != nil {
			return out, err
		}
		s.log.Warn("job marked failed: its process stopped", "job", j.ID, "kind", j.Kind, "domain", j.Domain, "pid", u.Holder)
		out = append(out, j)
		if d := writtenDir(j.Kind, u.Request); d != "" {
			s.restoreDirs = append(s.restoreDirs, d)
		}
	}
	return out, nil
}

// writtenDir is the directory an interrupted restore or export of this
// kind and request was writing into ("" for others, or none named).
func writtenDir(kind string, request []byte) string {
	switch kind {
	case api.KindRestore:
		var r api.RestoreRequest
		if json.Unmarshal(request, &r) == nil && r.To != "" && filepath.IsAbs(r.To) {
			return filepath.Clean(r.To)
		}
	case api.KindExport:
		var r api.ExportRequest
		if json.Unmarshal(request, &r) == nil && filepath.IsAbs(r.Output) {
			return filepath.Dir(filepath.Clean(r.Output))
		}
	}
	return ""
}

// Recover repairs what an interrupted run left, at daemon start: the
// libvirt backup jobs and scratch files of the backups failInterrupted
// found (the next backup repairs their checkpoints); guests left frozen
// are thawed; mounts and sessions whose holder is gone are undone.
func (s *Service) Recover(ctx context.Context) error {
	if err := s.writable(); err != nil {
		return err
	}
	var errs []error
	for _, j := range s.interrupted {
		if j.Kind == api.KindBackup && j.Domain != "" {
			if err := s.endStaleJob(ctx, j.Domain); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) == 0 { // no backup job of ours runs now: their directories go
		gone, err := s.state.SweepScratch()
		if err != nil {
			errs = append(errs, err)
		}
		if len(gone) > 0 {
			s.log.Warn("removed backup runtime directories an interrupted run left", "dirs", strings.Join(gone, ", "))
		}
	}
	// No restore of ours runs now: the private directories interrupted
	// ones were writing in go (nothing half-written stays beside the
	// destination).
	gone, err := restore.SweepTemp(s.restoreDirs)
	if err != nil {
		errs = append(errs, err)
	}
	if len(gone) > 0 {
		s.log.Warn("removed what interrupted restores left", "paths", strings.Join(gone, ", "))
	}
	if h, err := s.host(); err == nil {
		if err := h.Thaw(ctx); err != nil {
			errs = append(errs, err)
		}
		if err := h.Mounts(ctx); err != nil {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, err)
	}
	if err := s.recoverSessions(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (s *Service) endStaleJob(ctx context.Context, domain string) error {
	h, err := s.host()
	if err != nil {
		return err
	}
	_, uuid, err := virt.DomainID(h.Conn, domain)
	if err != nil {
		return nil // gone: nothing to end
	}
	return h.EndStaleJob(ctx, uuid)
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	return pid > 0 && (syscall.Kill(pid, 0) == nil || errors.Is(syscall.Kill(pid, 0), syscall.EPERM))
}

// ThawOrphans thaws the guests whose freezer died (see
// recovery.Host.Thaw); the daemon calls it every second.
func (s *Service) ThawOrphans(ctx context.Context) error {
	h, err := s.host()
	if err != nil {
		return err
	}
	return h.Thaw(ctx)
}

// DefaultJobRetention is how long ended jobs stay in the catalog.
const DefaultJobRetention = 90 * 24 * time.Hour

// ExpireJobs removes the jobs (and their logs) that ended longer than the
// job retention ago; the daemon calls it at start and every hour.
func (s *Service) ExpireJobs(ctx context.Context) {
	keep := s.cfg.JobRetention
	if keep <= 0 {
		keep = DefaultJobRetention
	}
	n, err := s.cat.ExpireJobs(ctx, s.cfg.Clock().Add(-keep))
	switch {
	case err != nil:
		s.log.Error("expiring old jobs", "err", err)
	case n > 0:
		s.log.Info("expired old jobs and their logs", "jobs", n, "older_than", keep.String())
	}
}

// Healthy reports whether the job engine and the catalog answer within a
// few seconds (the daemon feeds the watchdog only then).
func (s *Service) Healthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_ = s.jobs.Live()
		_, err := s.cat.LastRun(ctx, "")
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("job engine or catalog stuck: %w", ctx.Err())
	}
}
