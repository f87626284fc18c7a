package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/daemon"
	"github.com/virtkeep/virtkeep/hostd/policy"
	"github.com/virtkeep/virtkeep/hostd/schedule"
	"github.com/virtkeep/virtkeep/hostd/service"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/all"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// fakeClock is the scheduler's and the service's time: the wall clock
// moved by an offset the test sets (time passes within a step, so jobs
// that overlap still overlap in their recorded times).
type fakeClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}
func (c *fakeClock) Set(t time.Time) { c.mu.Lock(); c.offset = time.Until(t); c.mu.Unlock() }

// After never fires: the test ticks the scheduler itself.
func (c *fakeClock) After(time.Duration) <-chan time.Time { return nil }

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// TestWeekOfSchedules runs a week of one nightly policy over 20 domains
// (concurrency 3, a full on the first run of each week, incrementals
// otherwise, keep 2 daily and 2 weekly) and a nightly GC, on a fake clock,
// against libvirt: every scheduled backup ran once, never more than 3 at
// once nor two on one domain, at the planned levels; retention left
// exactly what the rules keep, GC freed space, every point verifies, and
// goroutines, fds and RSS stay bounded day after day.
func TestWeekOfSchedules(t *testing.T) {
	testenv.Integration(t)
	env := vm.Libvirt(t)
	n := 20 // make reliability: 30 (VIRTKEEP_SOAK_DOMAINS)
	if v, err := strconv.Atoi(os.Getenv("VIRTKEEP_SOAK_DOMAINS")); err == nil && v > 0 {
		n = v
	}
	(&testenv.FaultRow{Fault: fmt.Sprintf("load and soak: %d domains, a week of nightly policies, GC and sampled verifies on an injected clock", n), Iterations: 7,
		Checked: "every scheduled backup ran once at its level, never two on one domain, retention exact, every point verifies, goroutines, fds and RSS bounded day after day, the catalog bounded by job expiry (two days kept)"}).Record(t)
	var doms []*vm.Domain
	for i := 0; i < n; i++ {
		doms = append(doms, env.NewDomain(t, vm.DomainSpec{Start: true, Disks: []vm.DiskSpec{{Size: 8 << 20, Seed: uint64(i + 1)}}}))
	}
	dir := testenv.TempDir(t)
	clock := &fakeClock{}
	clock.Set(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)) // a Wednesday
	nightly := must[*schedule.Cron](t)(schedule.ParseCron("0 1 * * *", "UTC"))
	gc := must[*schedule.Cron](t)(schedule.ParseCron("0 4 * * *", "UTC"))
	verify := must[*schedule.Cron](t)(schedule.ParseCron("0 5 * * *", "UTC"))
	pol := &policy.Policy{Name: "nightly", Domains: []string{"vk-testweekofschedules-*"},
		Schedules: []*schedule.Cron{nightly}, Jitter: 30 * time.Minute, Level: "inc", Full: policy.Full{Period: "week", Location: time.UTC},
		Targets: []string{"local"}, Concurrency: 3, Retention: map[string]target.Retention{"local": {KeepDaily: 2, KeepWeekly: 2}}}
	svc, err := service.New(context.Background(), service.Config{Mode: "daemon", Version: "test", StateDir: filepath.Join(dir, "state"),
		LibvirtURI: vm.URI(), MaxJobs: 8, MaxJobsPerTarget: 8, Clock: clock.Now, Policies: []*policy.Policy{pol},
		// GC's grace is the backend's time, which the injected clock does
		// not move: the week passes in seconds of it.
		GCGrace: time.Millisecond,
		// Jobs and their logs age out after two days: the catalog stays
		// bounded through the week.
		JobRetention: 48 * time.Hour,
		Targets:      []service.Target{{Name: "local", GC: gc, Verify: verify, VerifyReadData: "sample", VerifySample: 7, Open: all.Config{Name: "local", Kind: "local", Path: filepath.Join(dir, "repo")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if ps, err := svc.Policies(context.Background()); err != nil || len(ps[0].Domains) != n {
		t.Fatalf("policy selects %v (%v), want the %d test domains", ps, err, n)
	}
	sched := daemon.NewScheduler(svc, clock, nil)
	sched.Set(daemon.Entries(svc, nil))

	var base resources
	var steady int64
	start := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	seen := map[string]api.Job{} // every job of the week, as it ended
	for day := 0; day < 7; day++ {
		for step := 0; step < 24*6; step++ {
			now := start.Add(time.Duration(day)*24*time.Hour + time.Duration(step)*10*time.Minute)
			clock.Set(now)
			sched.Tick(context.Background(), now)
			waitIdle(t, svc)
		}
		// The day's changes: the same region each day, so that pruned
		// points leave chunks for GC.
		for i, d := range doms {
			if err := d.Write(context.Background(), "vda", 1<<20, 512<<10, byte(day*n+i+1)); err != nil {
				t.Fatal(err)
			}
		}
		kept := expireJobs(t, svc, seen)
		if bound := 3 * (n + 3); kept > bound {
			t.Errorf("day %d: %d jobs in the catalog after expiry, want at most %d (two days' worth)", day, kept, bound)
		}
		runtime.GC()
		got := measure(t)
		got.catalog = catalogSize(filepath.Join(dir, "state"))
		got.jobs = kept
		t.Logf("day %d (%s): %+v", day, clock.Now().Weekday(), got)
		if day == 0 {
			base = got
			continue
		}
		if day == 3 {
			steady = got.catalog // two days of jobs from now on
		}
		if day > 3 && got.catalog > steady+steady/2 {
			t.Errorf("day %d: the catalog's files hold %d bytes, up from %d on day 3: expiry does not bound it", day, got.catalog, steady)
		}
		if got.goroutines > base.goroutines+10 || got.fds > base.fds+8 || got.rss > base.rss+96<<20 {
			t.Errorf("day %d: %+v after the first day's %+v: something leaks", day, got, base)
		}
	}
	checkWeek(t, svc, doms, start, seen)
	catchUp(t, svc, clock)
}

// catchUp: virtkeepd down for three nights and started again (a new
// scheduler from the catalog's last runs) runs the policy once, not three
// times, and says so in the run's log.
func catchUp(t *testing.T, svc *service.Service, clock *fakeClock) {
	ctx := context.Background()
	runs := func() []api.Job {
		js, _ := svc.Jobs(ctx, api.JobsRequest{All: true})
		var out []api.Job
		for _, j := range js {
			if j.Kind == api.KindPolicy {
				out = append(out, j)
			}
		}
		return out
	}
	before := len(runs())
	last, err := svc.LastRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sched := daemon.NewScheduler(svc, clock, nil)
	sched.Set(daemon.Entries(svc, last))
	now := clock.Now().Add(3 * 24 * time.Hour)
	clock.Set(now)
	for i := 0; i < 3; i++ {
		sched.Tick(ctx, now.Add(time.Duration(i)*time.Minute))
		waitIdle(t, svc)
	}
	rs := runs()
	if len(rs) != before+1 {
		t.Fatalf("%d runs after three nights down, want 1", len(rs)-before)
	}
	caught := false
	_ = svc.Log(ctx, rs[len(rs)-1].ID, false, func(l api.LogLine) error {
		caught = caught || (strings.Contains(l.Message, "catching up once") && l.Attrs["missed"] == "2")
		return nil
	})
	if !caught || rs[len(rs)-1].State != api.Succeeded {
		t.Errorf("the catch-up run (%s %s) does not say it stands for 2 missed runs", rs[len(rs)-1].State, rs[len(rs)-1].Error)
	}
}

func waitIdle(t *testing.T, svc *service.Service) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for len(svc.Running()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("jobs still running: %v", svc.Running())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type resources struct {
	goroutines, fds int
	rss             int64
	catalog         int64 // bytes of the catalog's files
	jobs            int   // jobs in the catalog
}

// expireJobs records every job the catalog holds in seen, ages the old
// ones out as the daemon does each hour, and counts those left.
func expireJobs(t *testing.T, svc *service.Service, seen map[string]api.Job) int {
	ctx := context.Background()
	js, err := svc.Jobs(ctx, api.JobsRequest{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range js {
		seen[j.ID] = j
	}
	svc.ExpireJobs(ctx)
	if js, err = svc.Jobs(ctx, api.JobsRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	return len(js)
}

// catalogSize is the size of the catalog's database and journal files.
func catalogSize(stateDir string) int64 {
	var n int64
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if fi, err := os.Stat(filepath.Join(stateDir, "catalog.db"+suffix)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func measure(t *testing.T) resources {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	statm, _ := os.ReadFile("/proc/self/statm")
	f := strings.Fields(string(statm))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return resources{goroutines: runtime.NumGoroutine(), fds: len(ents), rss: pages * int64(os.Getpagesize())}
}

// checkWeek checks what the week left.
func checkWeek(t *testing.T, svc *service.Service, doms []*vm.Domain, start time.Time, seen map[string]api.Job) {
	ctx := context.Background()
	var js []api.Job
	for _, j := range seen {
		js = append(js, j)
	}
	byDomain := map[string][]api.Job{}
	var backups []api.Job
	freed, verifies := int64(0), 0
	for _, j := range js {
		switch j.Kind {
		case api.KindBackup:
			if j.State != api.Succeeded || j.Policy != "nightly" {
				t.Errorf("backup %s of %s: %s %s", j.ID, j.Domain, j.State, j.Error)
				continue
			}
			backups = append(backups, j)
			byDomain[j.Domain] = append(byDomain[j.Domain], j)
		case api.KindGC:
			for _, g := range j.Result.GC {
				freed += g.BytesFreed
			}
		case api.KindPolicy:
			if j.State != api.Succeeded {
				t.Errorf("policy run %s: %s %s", j.ID, j.State, j.Error)
			}
		case api.KindVerify:
			verifies++
			var points, chunks, read int
			fmt.Sscanf(j.Result.Checks["local"].Summary, "no problems in %d points, %d chunks (%d read)", &points, &chunks, &read)
			if j.State != api.Succeeded || read == 0 || read*3 > chunks {
				t.Errorf("nightly verify %s: %s, %q: want a seventh of the chunks read", j.ID, j.State, j.Result.Checks["local"].Summary)
			}
		}
	}
	if len(backups) != 7*len(doms) {
		t.Errorf("%d backups, want %d (one per domain per night)", len(backups), 7*len(doms))
	}
	wantLevels := []string{"full", "inc", "inc", "inc", "inc", "full", "inc"} // Wed .. Tue; Monday starts a week
	for _, d := range doms {
		bs := byDomain[d.Name]
		sort.Slice(bs, func(i, j int) bool { return bs[i].Result.Point.Time.Before(bs[j].Result.Point.Time) })
		for i, b := range bs {
			day := int(b.Result.Point.Time.Sub(start) / (24 * time.Hour))
			if i >= len(wantLevels) || day != i || b.Result.Point.Level != wantLevels[i] {
				t.Errorf("%s: backup %d on day %d at level %s, want day %d at %s", d.Name, i, day, b.Result.Point.Level, i, wantLevels[min(i, 6)])
			}
		}
	}
	if most, two := overlaps(backups); most > 3 || two {
		t.Errorf("%d backups ran at once (want at most 3); two on one domain: %v", most, two)
	} else if most < 3 {
		t.Errorf("at most %d backups ran at once: the policy's concurrency of 3 was never used", most)
	}
	// keep_daily 2 + keep_weekly 2 on the last night (a Tuesday): Tuesday
	// and Monday (daily; Tuesday also this week's weekly) and Sunday (last
	// week's weekly).
	for _, d := range doms {
		ps, err := svc.Points(ctx, api.ListRequest{Domain: d.Name})
		if err != nil {
			t.Fatal(err)
		}
		var days []string
		for _, p := range ps {
			days = append(days, p.Time.Weekday().String())
		}
		if strings.Join(days, ",") != "Sunday,Monday,Tuesday" {
			t.Errorf("%s: points left on %v, want Sunday, Monday, Tuesday", d.Name, days)
		}
	}
	if freed == 0 {
		t.Errorf("GC freed nothing")
	}
	if verifies != 7 {
		t.Errorf("%d nightly verifies, want 7", verifies)
	}
	most, _ := overlaps(backups)
	t.Logf("%d backups, at most %d at once; GC freed %d bytes", len(backups), most, freed)
	j, err := svc.Verify(ctx, api.VerifyRequest{All: true, ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = svc.Watch(ctx, j.ID, func(last api.Job) error { j = last; return nil })
	if j.State != api.Succeeded {
		t.Errorf("verify --all --read-data: %s %s", j.State, j.Error)
	}
}

// overlaps is the most backups running at once, and whether two ever ran
// on one domain at once.
func overlaps(js []api.Job) (int, bool) {
	type ev struct {
		t     time.Time
		delta int
		dom   string
	}
	var evs []ev
	for _, j := range js {
		evs = append(evs, ev{j.Started, 1, j.Domain}, ev{j.Ended, -1, j.Domain})
	}
	sort.Slice(evs, func(i, j int) bool {
		return evs[i].t.Before(evs[j].t) || evs[i].t.Equal(evs[j].t) && evs[i].delta < evs[j].delta
	})
	cur, most, per, two := 0, 0, map[string]int{}, false
	for _, e := range evs {
		cur += e.delta
		per[e.dom] += e.delta
		most = max(most, cur)
		two = two || per[e.dom] > 1
	}
	return most, two
}
