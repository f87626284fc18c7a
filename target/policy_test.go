package target_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/testenv"
)

func TestRetentionDecide(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	var ms []*target.Manifest
	// One point every 6 hours for 60 days, for two domains.
	for _, dom := range []string{"a", "b"} {
		for i := 0; i < 240; i++ {
			tm := now.Add(-time.Duration(i) * 6 * time.Hour)
			ms = append(ms, &target.Manifest{ID: target.NewPointID(tm), Domain: dom, Time: tm})
		}
	}
	protected := map[string]bool{ms[239].ID: true} // oldest of a
	decs := target.Decide(ms, target.Retention{KeepLast: 3, KeepDaily: 7, KeepWeekly: 4, KeepMonthly: 2}, protected, now)
	kept := map[string]int{}
	for _, d := range decs {
		if d.Keep {
			kept[d.Domain]++
		}
	}
	// last 3 (2 of them also today's daily) + 7 dailies + 4 weeklies (1-2
	// overlap the dailies) + 2 monthlies: a's count includes the protected.
	if kept["b"] < 10 || kept["b"] > 16 || kept["a"] != kept["b"]+1 {
		t.Fatalf("kept %v", kept)
	}
	for _, d := range decs {
		if d.ID == ms[239].ID && (!d.Keep || d.Reasons[0] != "protected") {
			t.Fatalf("protected point decision %+v", d)
		}
		if d.Keep && len(d.Reasons) == 0 {
			t.Fatalf("kept without a reason: %+v", d)
		}
	}
	// keep-within keeps everything in the window.
	decs = target.Decide(ms[:240], target.Retention{KeepWithin: 48 * time.Hour}, nil, now)
	n := 0
	for _, d := range decs {
		if d.Keep {
			n++
		}
	}
	if n != 9 { // 0h, 6h, ..., 48h
		t.Fatalf("keep-within 48h kept %d", n)
	}
}

func TestPruneDryRunProtectAndGC(t *testing.T) {
	b := mem.New()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b.SetClock(func() time.Time { return clock })
	ctx := context.Background()
	if err := target.Init(ctx, b, target.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := target.Open(ctx, b, target.OpenOptions{Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := testenv.NewContent(4<<20, 1, testenv.Fill{Random: 1})
	var ids []string
	for i := 0; i < 5; i++ {
		_ = c.Record(testenv.Write{Off: int64(i) * 300000, Len: 1000, Pattern: byte(i + 1)})
		m, _ := backup(t, r, c, target.LevelFull, "", nil)
		ids = append(ids, m.ID)
		clock = clock.Add(25 * time.Hour)
	}
	if err := r.Protect(ctx, ids[0], true); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prune(ctx, "", target.Retention{}, false); err == nil {
		t.Fatal("prune without rules accepted")
	}
	decs, err := r.Prune(ctx, "vm1", target.Retention{KeepLast: 2}, true)
	if err != nil {
		t.Fatal(err)
	}
	if pts, _ := r.Points(ctx, nil); len(pts) != 5 {
		t.Fatalf("dry run deleted points: %d left", len(pts))
	}
	drop := 0
	for _, d := range decs {
		if !d.Keep {
			drop++
		}
	}
	if drop != 2 {
		t.Fatalf("dry run would drop %d, want 2 (3 kept: 2 last + protected)", drop)
	}
	if _, err := r.Prune(ctx, "vm1", target.Retention{KeepLast: 2}, false); err != nil {
		t.Fatal(err)
	}
	pts, _ := r.Points(ctx, nil)
	if len(pts) != 3 || pts[0].ID != ids[0] {
		t.Fatalf("after prune: %d points", len(pts))
	}
	if err := r.DeletePoint(ctx, ids[0]); !errors.Is(err, target.ErrProtected) {
		t.Fatalf("delete protected: %v", err)
	}
	// A backup that is still being written has stored a chunk no manifest
	// names yet (here: one that was aborted).
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm1", Level: target.LevelFull})
	if err != nil {
		t.Fatal(err)
	}
	dw, _ := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: 1 << 20})
	if err := dw.WriteChunk(ctx, 0, bytes.Repeat([]byte{42}, dw.ChunkSize())); err != nil {
		t.Fatal(err)
	}
	_ = dw.Close(ctx)
	pw.Abort(ctx)
	// GC with grace keeps young unreferenced objects, without grace frees them.
	st, err := r.GC(ctx, target.GCOptions{Grace: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if st.Deleted == 0 || st.KeptYoung == 0 {
		t.Fatalf("gc with grace: %+v", st)
	}
	st2, err := r.GC(ctx, target.GCOptions{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	if st2.Deleted != st.KeptYoung {
		t.Fatalf("gc without grace deleted %d, expected the %d young ones", st2.Deleted, st.KeptYoung)
	}
	for i, id := range []string{ids[0], ids[3], ids[4]} {
		_ = i
		if _, err := r.OpenDisk(ctx, id, "vda"); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("check after gc: %v %v", err, rep)
	}
}

func TestLocks(t *testing.T) {
	b := mem.New()
	r := newRepo(t, b, nil)
	ctx := context.Background()
	s1, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatalf("two shared locks: %v", err)
	}
	if _, err := r.Lock(ctx, true); !errors.Is(err, target.ErrLocked) || !strings.Contains(err.Error(), "testhost") {
		t.Fatalf("exclusive over shared: %v", err)
	}
	// A prune or GC cannot run under a backup's lock.
	if _, err := r.GC(ctx, target.GCOptions{}); !errors.Is(err, target.ErrLocked) {
		t.Fatalf("gc under a shared lock: %v", err)
	}
	s1.Unlock(ctx)
	s2.Unlock(ctx)
	x, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.NewPoint(ctx, target.PointSpec{Domain: "d", Level: target.LevelFull}); !errors.Is(err, target.ErrLocked) {
		t.Fatalf("backup under an exclusive lock: %v", err)
	}
	x.Unlock(ctx)
	// A host whose clock is an hour ahead still sees a fresh lock as live:
	// staleness is judged by the backend's modification times.
	held, _ := r.Lock(ctx, true)
	r2, err := target.Open(ctx, b, target.OpenOptions{Now: func() time.Time { return time.Now().Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Lock(ctx, false); !errors.Is(err, target.ErrLocked) {
		t.Fatalf("a skewed clock took a live lock as stale: %v", err)
	}
	held.Unlock(ctx)
	// A lock its holder stopped refreshing 30 min ago (backend time) is
	// ignored: a crashed holder elsewhere.
	if err := b.Put(ctx, "locks/crashed", []byte(`{"host":"elsewhere","pid":1,"exclusive":true}`)); err != nil {
		t.Fatal(err)
	}
	b.SetClock(func() time.Time { return time.Now().Add(31 * time.Minute) })
	l, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatalf("stale lock not ignored: %v", err)
	}
	l.Unlock(ctx)
}

func TestKeysAndEncryption(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	k, _ := target.NewKey()
	if s := k.String(); strings.Contains(s, "=") || !strings.Contains(s, "redacted") {
		t.Fatalf("key prints as %q", s)
	}
	for _, pass := range []string{"", "correct horse"} {
		path := filepath.Join(dir, "key"+pass[:min(len(pass), 3)])
		if err := target.WriteKeyFile(path, k, []byte(pass), target.KDFParams{Time: 1, MemoryKiB: 1024, Threads: 1}); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Fatalf("key file mode %v", fi.Mode())
		}
		if err := target.WriteKeyFile(path, k, nil, target.DefaultKDF); err == nil {
			t.Fatal("key file overwritten")
		}
		got, err := target.ReadKeyFile(path, []byte(pass))
		if err != nil || got != k {
			t.Fatalf("read back: %v", err)
		}
		if pass != "" {
			if _, err := target.ReadKeyFile(path, []byte("wrong")); !errors.Is(err, target.ErrWrongKey) {
				t.Fatalf("wrong passphrase: %v", err)
			}
		}
		_ = os.Chmod(path, 0o644)
		if _, err := target.ReadKeyFile(path, []byte(pass)); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("world-readable key file: %v", err)
		}
	}
	b := mem.New()
	if err := target.Init(ctx, b, target.InitOptions{Key: &k}); err != nil {
		t.Fatal(err)
	}
	if _, err := target.Open(ctx, b, target.OpenOptions{}); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Fatalf("open without key: %v", err)
	}
	other, _ := target.NewKey()
	if _, err := target.Open(ctx, b, target.OpenOptions{Key: &other}); !errors.Is(err, target.ErrWrongKey) {
		t.Fatalf("open with another key: %v", err)
	}
	r, err := target.Open(ctx, b, target.OpenOptions{Key: &k})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := testenv.NewContent(2<<20, 1, testenv.Fill{Text: 1})
	m, _ := backup(t, r, c, target.LevelFull, "", nil)
	// Nothing stored reveals the content: no chunk name is the plain SHA-256,
	// and no plaintext text appears in any object.
	plain := make([]byte, 256<<10)
	_, _ = c.ReadAt(plain, 0)
	err = b.List(ctx, "", func(fi target.ObjectInfo) error {
		data, _ := b.Get(ctx, fi.Key, 0, -1)
		if strings.Contains(string(data), "virtual machine") || strings.Contains(string(data), `"domain":"vm1"`) {
			t.Errorf("%s holds plaintext", fi.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	restoreEquals(t, r, m.ID, c)
	// Same data, different key: different chunk IDs (never collide).
	b2 := mem.New()
	r2 := newRepo(t, b2, &other)
	backup(t, r2, c, target.LevelFull, "", nil)
	names := func(b *mem.Mem) map[string]bool {
		out := map[string]bool{}
		_ = b.List(ctx, "chunks/", func(fi target.ObjectInfo) error { out[filepath.Base(fi.Key)] = true; return nil })
		return out
	}
	n1, n2 := names(b), names(b2)
	for k := range n1 {
		if n2[k] {
			t.Fatalf("chunk %s has the same ID under two keys", k)
		}
	}
}

func TestClonesDedup(t *testing.T) {
	r := newRepo(t, mem.New(), nil)
	template, _ := testenv.NewContent(32<<20, 99, testenv.Fill{Random: 1, Text: 1, Hole: 1})
	vm1, vm2 := template.Snapshot(), template.Snapshot()
	_ = vm1.Record(testenv.Write{Off: 1 << 20, Len: 100000, Pattern: 1})
	_ = vm2.Record(testenv.Write{Off: 20 << 20, Len: 100000, Pattern: 2})
	_, s1 := backup(t, r, vm1, target.LevelFull, "", nil)
	ctx := context.Background()
	pw, _ := r.NewPoint(ctx, target.PointSpec{Domain: "vm2", Level: target.LevelFull})
	dw, _ := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: vm2.Size()})
	buf := make([]byte, dw.ChunkSize())
	for i := int64(0); i < dw.Chunks(); i++ {
		_, _ = vm2.ReadAt(buf, i*int64(len(buf)))
		if err := dw.WriteChunk(ctx, i, buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := dw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := dw.Stats()
	if _, err := pw.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// vm2 shares all but the chunks its own write touched (and vm1's).
	if s2.ChunksNew > 2 || s2.BytesStored*10 > s1.BytesStored {
		t.Fatalf("clone stored %+v, first VM %+v", s2, s1)
	}
}

// TestRetentionKeepsChainBase: whatever the rules, the newest point of a
// domain stays (the next incremental builds on it), and so does the full
// under a newest differential.
func TestRetentionKeepsChainBase(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	old := now.Add(-72 * time.Hour)
	full := &target.Manifest{ID: target.NewPointID(old.Add(-time.Hour)), Domain: "a", Time: old.Add(-time.Hour), Level: target.LevelFull}
	diff := &target.Manifest{ID: target.NewPointID(old), Domain: "a", Time: old, Level: target.LevelDiff}
	decs := target.Decide([]*target.Manifest{full, diff}, target.Retention{KeepWithin: time.Hour}, nil, now)
	for _, d := range decs {
		if !d.Keep || !strings.HasPrefix(d.Reasons[0], "chain base") {
			t.Errorf("%s: keep %v %v: want kept as a chain base", d.ID, d.Keep, d.Reasons)
		}
	}
}

// TestCheckSample: the parts of a sample read every chunk once between them.
func TestCheckSample(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New(), nil)
	c, _ := testenv.NewContent(8<<20, 5, testenv.Fill{Random: 1})
	backup(t, r, c, target.LevelFull, "", nil)
	read := 0
	for part := 0; part < 3; part++ {
		rep, err := r.Check(ctx, target.CheckOptions{ReadData: true, Sample: target.Sample{Part: part, Of: 3}})
		if err != nil || !rep.OK() {
			t.Fatal(rep, err)
		}
		if rep.ChunksRead == 0 || rep.ChunksRead == rep.Chunks {
			t.Errorf("part %d read %d of %d chunks", part, rep.ChunksRead, rep.Chunks)
		}
		read += rep.ChunksRead
		if part == 2 && read != rep.Chunks {
			t.Errorf("three parts read %d chunks of %d", read, rep.Chunks)
		}
	}
}

// TestPruneTwoHostsOneName: two hosts share a target, each with its own VM
// called web1. Retention groups by domain UUID, and a host prunes only the
// points it wrote: host A's keep_last 1 leaves every point of B's web1,
// whether B has another host name or the same one on another machine
// (cloned hosts, a default name): a point records its machine's ID.
func TestPruneTwoHostsOneName(t *testing.T) {
	for _, tc := range []struct{ name, hostB, machineB string }{
		{"other host name", "host-b", "machine-b"},
		{"same host name, other machine", "host-a", "machine-b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pruneTwoHosts(t, target.OpenOptions{Host: "host-a", MachineID: "machine-a"}, target.OpenOptions{Host: tc.hostB, MachineID: tc.machineB})
		})
	}
}

func pruneTwoHosts(t *testing.T, optA, optB target.OpenOptions) {
	ctx := context.Background()
	b := mem.New()
	if err := target.Init(ctx, b, target.InitOptions{PackSize: testPackSize}); err != nil {
		t.Fatal(err)
	}
	hostA, hostB := openRepo(t, b, optA), openRepo(t, b, optB)
	when := time.Now().Add(-time.Hour)
	write := func(r *target.Repository, uuid string) string {
		when = when.Add(time.Minute)
		pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "web1", DomainUUID: uuid, Level: target.LevelFull, Time: when})
		if err != nil {
			t.Fatal(err)
		}
		dw, _ := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: 1 << 20})
		if err := dw.Close(ctx); err != nil {
			t.Fatal(err)
		}
		m, err := pw.Commit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	const uuidA, uuidB = "aaaaaaaa-0000-0000-0000-000000000001", "bbbbbbbb-0000-0000-0000-000000000002"
	a1, a2 := write(hostA, uuidA), write(hostA, uuidA)
	b1, b2 := write(hostB, uuidB), write(hostB, uuidB)

	keep := target.Retention{KeepLast: 1}
	self := hostA.Identity()
	decs, err := hostA.PruneBy(ctx, func(*target.Manifest) *target.Retention { return &keep }, target.PruneScope{Self: &self}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range decs {
		if d.DomainUUID != uuidA {
			t.Errorf("host A decided on %s of %s (%s)", d.ID, d.Host, d.DomainUUID)
		}
	}
	have := map[string]bool{}
	pts, _ := hostA.Points(ctx, nil)
	for _, m := range pts {
		have[m.ID] = true
	}
	if have[a1] || !have[a2] || !have[b1] || !have[b2] {
		t.Fatalf("after host A's prune: %v, want %s gone and %s, %s, %s kept", have, a1, a2, b1, b2)
	}
	// Every host's points, by UUID: B's web1 keeps its newest too.
	if _, err := hostA.PruneBy(ctx, func(*target.Manifest) *target.Retention { return &keep }, target.PruneScope{}, false); err != nil {
		t.Fatal(err)
	}
	pts, _ = hostA.Points(ctx, nil)
	var left []string
	for _, m := range pts {
		left = append(left, m.ID)
	}
	if len(left) != 2 || left[0] != a2 && left[1] != a2 || !slices.Contains(left, b2) {
		t.Fatalf("after pruning every host's points: %v, want %s and %s", left, a2, b2)
	}
}

// TestKeepWithinAfterClockJump: a clock set a year ahead does not age
// every point out of keep_within: it counts from the newest point.
func TestKeepWithinAfterClockJump(t *testing.T) {
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var ms []*target.Manifest
	for i := range 10 {
		tm := base.Add(time.Duration(i) * time.Hour)
		ms = append(ms, &target.Manifest{ID: tm.Format("20060102T150405Z") + "-00000000", Domain: "vm1", DomainUUID: "u", Time: tm, Level: target.LevelFull})
	}
	decs := target.Decide(ms, target.Retention{KeepWithin: 48 * time.Hour}, nil, base.AddDate(1, 0, 0))
	for _, d := range decs {
		if !d.Keep {
			t.Errorf("point %s removed after the clock jumped a year ahead", d.ID)
		}
	}
}

// TestRetentionClockWasAhead: a point taken while the clock was a year
// ahead, then points taken after the clock was set right. keep_last 3
// keeps the three newest of those (not two of them and the one dated in
// the future), the chain base is the newest of them, and the point dated
// in the future is kept, saying why.
func TestRetentionClockWasAhead(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	mk := func(tm time.Time) *target.Manifest {
		return &target.Manifest{ID: tm.Format("20060102T150405Z") + "-00000000", Domain: "vm1", DomainUUID: "u", Time: tm, Level: target.LevelInc}
	}
	ahead := mk(now.AddDate(1, 0, 0).Add(-time.Hour))
	ms := []*target.Manifest{ahead}
	for i := range 5 {
		ms = append(ms, mk(now.Add(-time.Duration(5-i)*time.Hour)))
	}
	keep := map[string][]string{}
	for _, d := range target.Decide(ms, target.Retention{KeepLast: 3}, nil, now) {
		if d.Keep {
			keep[d.ID] = d.Reasons
		}
	}
	if len(keep) != 4 || keep[ahead.ID] == nil || !strings.Contains(keep[ahead.ID][0], "future") {
		t.Fatalf("kept %v: want the point dated in the future (saying so) and the three newest others", keep)
	}
	for _, m := range ms[3:] {
		if keep[m.ID] == nil {
			t.Errorf("point %s (one of the three newest taken since the clock was set right) removed", m.ID)
		}
	}
	if r := keep[ms[5].ID]; !slices.Contains(r, "chain base") {
		t.Errorf("the newest point taken since the clock was set right is not the chain base: %v", r)
	}
}
