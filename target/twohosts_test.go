package target_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/retry"
	"github.com/virtkeep/virtkeep/testenv"
)

// hostLoop is one host's share of TestTwoHostsOneBucket: its own VM,
// backed up round after round, each point's expected content kept.
type hostLoop struct {
	name string
	r    *target.Repository
	uuid string
	gen  []*testenv.Content // gen[i]: the disk after i rounds
	want map[string]*testenv.Content
}

func (h *hostLoop) content(i int) *testenv.Content {
	for len(h.gen) <= i {
		c, _ := testenv.NewContent(6<<20, uint64(len(h.name))*1000, testenv.Fill{Random: 0.8, Hole: 0.2})
		for g := 1; g < len(h.gen)+1; g++ {
			_ = c.Record(testenv.Write{Off: int64(g*524288) % (5 << 20), Len: 512 << 10, Pattern: byte(g)})
		}
		h.gen = append(h.gen, c)
	}
	return h.gen[i]
}

// backupOnce writes round i's content as a new point, retrying while the
// other host's prune or GC holds the repository.
func (h *hostLoop) backupOnce(ctx context.Context, i int) error {
	c := h.content(i)
	for {
		pw, err := h.r.NewPoint(ctx, target.PointSpec{Domain: "web1", DomainUUID: h.uuid, Level: target.LevelFull})
		if errors.Is(err, target.ErrLocked) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			return err
		}
		dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: c.Size()})
		if err != nil {
			pw.Abort(ctx)
			return err
		}
		buf := make([]byte, dw.ChunkSize())
		for idx := range dw.Chunks() {
			_, _ = c.ReadAt(buf, idx*int64(len(buf)))
			if err = dw.WriteChunk(ctx, idx, buf); err != nil {
				break
			}
		}
		if err == nil {
			err = dw.Close(ctx)
		}
		var m *target.Manifest
		if err == nil {
			m, err = pw.Commit(ctx)
		} else {
			pw.Abort(ctx)
		}
		if err != nil {
			return err
		}
		h.want[m.ID] = c
		return nil
	}
}

// TestTwoHostsOneBucket: two hosts (their own machine IDs and names) share
// one S3 bucket, each with its own VM called web1, each backing up in a
// loop, while host A prunes its own points (keep_last 2) and garbage
// collects with repacks (grace shortened) in a loop of its own. At the
// end every point either host still has restores byte-exact, host B's
// points are all there (A never touched them), and check --read-data is
// clean.
func TestTwoHostsOneBucket(t *testing.T) {
	rounds := testenv.Iterations(10)
	row := &testenv.FaultRow{Fault: "two hosts on one S3 bucket, each backing up in a loop, one pruning and GC-ing (with repack) in a loop", Iterations: rounds,
		Checked: "every remaining point of both hosts restores byte-exact, the other host's points all kept, check --read-data clean"}
	row.Record(t)
	srv := testenv.S3(t)
	ctx := context.Background()
	if err := target.Init(ctx, s3Backend(t, srv, "twohosts-loop"), target.InitOptions{PackSize: testPackSize}); err != nil {
		t.Fatal(err)
	}
	open := func(name, machine string) *hostLoop {
		r := openRepo(t, retry.Wrap(s3Backend(t, srv, "twohosts-loop"), retry.Config{}), target.OpenOptions{Host: name})
		o := target.OwnerOf(r)
		o.MachineID = machine
		target.SetOwner(r, o)
		return &hostLoop{name: name, r: r, uuid: fmt.Sprintf("%s-0000-0000-0000-000000000000", machine[:8]), want: map[string]*testenv.Content{}}
	}
	a, b := open("host-a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), open("host-b", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
	var wg sync.WaitGroup
	var passes atomic.Int32 // GC passes that swept something
	errs := make(chan error, 3)
	done := make(chan struct{})
	for _, h := range []*hostLoop{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				if err := h.backupOnce(ctx, i); err != nil {
					errs <- fmt.Errorf("%s round %d: %w", h.name, i, err)
					return
				}
				time.Sleep(150 * time.Millisecond)
				// Half way, wait (a while) for a GC pass that swept, so
				// that on a loaded machine too the loops overlap: the
				// rounds after it back up against a swept repository
				// while GC goes on.
				for wait := time.Now(); i == rounds/2 && passes.Load() == 0 && time.Since(wait) < 30*time.Second; {
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	upkeep, swept := 0, 0
	go func() {
		defer close(done)
		keep := target.Retention{KeepLast: 2}
		for {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-stop(&wg):
				return
			}
			if _, err := a.r.PruneBy(ctx, func(*target.Manifest) *target.Retention { return &keep }, target.PruneScope{Hosts: []string{"host-a"}}, false); err != nil && !errors.Is(err, target.ErrLocked) {
				errs <- fmt.Errorf("prune: %w", err)
				return
			}
			st, err := a.r.GC(ctx, target.GCOptions{Grace: time.Millisecond})
			if err != nil && !errors.Is(err, target.ErrLocked) {
				errs <- fmt.Errorf("gc: %w", err)
				return
			}
			if err == nil {
				upkeep++
				swept += st.Deleted + st.Repacked
				if st.Deleted+st.Repacked > 0 {
					passes.Add(1)
				}
			}
		}
	}()
	wg.Wait()
	<-done
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	testenv.Report(t, "two hosts on one bucket: %d rounds each, %d GC passes between them that deleted or repacked %d packs", rounds, upkeep, swept)
	if swept == 0 {
		t.Fatal("no GC pass deleted or repacked anything: the loops did not overlap")
	}

	check := openRepo(t, s3Backend(t, srv, "twohosts-loop"), target.OpenOptions{})
	pts, err := check.Points(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]int{}
	for _, m := range pts {
		left[m.Host]++
		h := map[string]*hostLoop{"host-a": a, "host-b": b}[m.Host]
		c := h.want[m.ID]
		if c == nil {
			t.Fatalf("point %s of %s was never reported done", m.ID, m.Host)
		}
		restoreEquals(t, check, m.ID, c)
	}
	if left["host-b"] != rounds {
		t.Fatalf("host B has %d points of %d: host A's prune or GC touched them", left["host-b"], rounds)
	}
	rep, err := check.Check(ctx, target.CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check: %v %v", rep, err)
	}
}

// stop is closed once wg is done.
func stop(wg *sync.WaitGroup) <-chan struct{} {
	c := make(chan struct{})
	go func() { wg.Wait(); close(c) }()
	return c
}
