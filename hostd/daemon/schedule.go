package daemon

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/schedule"
	"github.com/virtkeep/virtkeep/hostd/service"
)

// Scheduler entries besides the policies' (service.PolicyEntry).
func gcEntry(t string) string     { return "gc/" + t }
func verifyEntry(t string) string { return "verify/" + t }

// Entries are what the daemon schedules: each policy's runs and each
// target's GC and verification, with when each last ran.
func Entries(svc *service.Service, last map[string]time.Time) []schedule.Entry {
	es := svc.PolicyEntries(last)
	for _, t := range svc.Targets() {
		if t.GC != nil {
			es = append(es, schedule.Entry{Name: gcEntry(t.Name), Crons: []*schedule.Cron{t.GC}, Last: last[gcEntry(t.Name)]})
		}
		if t.Verify != nil {
			es = append(es, schedule.Entry{Name: verifyEntry(t.Name), Crons: []*schedule.Cron{t.Verify}, Last: last[verifyEntry(t.Name)]})
		}
	}
	return es
}

// NewScheduler returns the scheduler that starts svc's jobs on clock. Each
// run is recorded in the catalog, so a restart catches up what it missed
// once and repeats nothing.
func NewScheduler(svc *service.Service, clock schedule.Clock, log *slog.Logger) *schedule.Scheduler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &schedule.Scheduler{Clock: clock, Log: log}
	s.Busy = func(entry string) bool { return busy(svc, entry) }
	s.Start = func(ctx context.Context, f schedule.Fire) {
		if err := svc.RecordRun(ctx, f.Entry, clock.Now()); err != nil {
			log.Error("scheduled run not recorded: it may run again after a restart", "entry", f.Entry, "err", err)
		}
		j, err := start(ctx, svc, f)
		if err != nil {
			log.Error("scheduled run not started", "entry", f.Entry, "err", err)
			return
		}
		log.Info("scheduled run started", "entry", f.Entry, "job", j.ID, "due", f.Due, "missed", f.Missed)
	}
	return s
}

func start(ctx context.Context, svc *service.Service, f schedule.Fire) (api.Job, error) {
	kind, name, _ := strings.Cut(f.Entry, "/")
	switch kind {
	case "policy":
		return svc.RunPolicy(ctx, api.RunRequest{Policy: name, Scheduled: true, Missed: f.Missed})
	case "gc":
		return svc.GC(ctx, api.GCRequest{Target: name})
	default:
		for _, t := range svc.Targets() {
			if t.Name == name {
				r := api.VerifyRequest{All: true, Target: name, ReadData: t.VerifyReadData == "all" || t.VerifyReadData == "sample"}
				if t.VerifyReadData == "sample" {
					r.Sample = t.VerifySample
				}
				return svc.Verify(ctx, r)
			}
		}
		return api.Job{}, api.Errorf(api.CodeNotFound, "no target %s", name)
	}
}

// busy: the entry's previous run still goes.
func busy(svc *service.Service, entry string) bool {
	kind, name, _ := strings.Cut(entry, "/")
	if kind == "policy" {
		return svc.PolicyRunning(name)
	}
	for _, j := range svc.Running() {
		if j.Kind == kind && j.Target == name {
			return true
		}
	}
	return false
}
