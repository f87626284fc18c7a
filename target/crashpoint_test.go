package target_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

var errCrashed = errors.New("crashed: the process is gone")

// crashing passes every operation on until its budget of changes (Put,
// Delete, Sync, SyncObjects) is spent; from then on nothing reaches the
// backend and every operation fails: the process was killed right
// after that many changes, whatever it meant to do next (cleanup too).
type crashing struct {
	target.Backend
	mu     sync.Mutex
	budget int // changes allowed; < 0: no limit
	done   int
	gone   bool // a change past the budget was tried: killed
}

func (c *crashing) change() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone || c.budget >= 0 && c.done >= c.budget {
		c.gone = true
		return errCrashed
	}
	c.done++
	return nil
}

func (c *crashing) dead() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		return errCrashed
	}
	return nil
}

func (c *crashing) Put(ctx context.Context, key string, data []byte) error {
	if err := c.change(); err != nil {
		return err
	}
	return c.Backend.Put(ctx, key, data)
}

func (c *crashing) Delete(ctx context.Context, key string) error {
	if err := c.change(); err != nil {
		return err
	}
	return c.Backend.Delete(ctx, key)
}

func (c *crashing) Sync(ctx context.Context) error {
	if err := c.change(); err != nil {
		return err
	}
	return c.Backend.Sync(ctx)
}

func (c *crashing) SyncObjects(ctx context.Context, keys []string) error {
	if err := c.change(); err != nil {
		return err
	}
	return c.Backend.SyncObjects(ctx, keys)
}

func (c *crashing) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if err := c.dead(); err != nil {
		return nil, err
	}
	return c.Backend.Get(ctx, key, off, n)
}

func (c *crashing) Stat(ctx context.Context, key string) (target.ObjectInfo, error) {
	if err := c.dead(); err != nil {
		return target.ObjectInfo{}, err
	}
	return c.Backend.Stat(ctx, key)
}

func (c *crashing) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	if err := c.dead(); err != nil {
		return err
	}
	return c.Backend.List(ctx, prefix, fn)
}

// crashRepo is a repository state copied into a new directory for each
// crash, and what its points hold.
type crashRepo struct {
	dir  string
	want map[string]*testenv.Content
	ids  []string // oldest first
}

// newCrashRepo writes four points (a full and three incrementals, each
// changing the same region, so that pruning the first two leaves GC
// packs to drop and to repack) into a packed local repository.
func newCrashRepo(t *testing.T) *crashRepo {
	cr := &crashRepo{dir: t.TempDir(), want: map[string]*testenv.Content{}}
	b, err := local.Open(local.Config{Path: cr.dir})
	if err != nil {
		t.Fatal(err)
	}
	r := initRepo(t, b, target.InitOptions{PackSize: 1 << 20})
	base := ""
	for g := range 4 {
		c, _ := testenv.NewContent(4<<20, 99, testenv.Fill{Random: 1})
		for i := 1; i <= g; i++ {
			_ = c.Record(testenv.Write{Off: 1 << 20, Len: 3 << 19, Pattern: byte(i)})
		}
		level := target.LevelInc
		if g == 0 {
			level = target.LevelFull
		}
		m, _ := backup(t, r, c, level, base, func(off, n int64) bool { return off < 5<<19 && off+n > 1<<20 })
		cr.want[m.ID], base = c, m.ID
		cr.ids = append(cr.ids, m.ID)
	}
	return cr
}

// clone copies the repository into a new directory and opens it through
// a backend that crashes after budget changes.
func (cr *crashRepo) clone(t *testing.T, budget int) (*target.Repository, *crashing, string) {
	dir := filepath.Join(t.TempDir(), "repo")
	if err := os.CopyFS(dir, os.DirFS(cr.dir)); err != nil {
		t.Fatal(err)
	}
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	cb := &crashing{Backend: b, budget: budget}
	r, err := target.Open(context.Background(), cb, target.OpenOptions{Host: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	return r, cb, dir
}

// restart opens dir as the next process does, once the crashed one's
// lock has aged out.
func restart(t *testing.T, dir string) *target.Repository {
	ctx := context.Background()
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	_ = b.List(ctx, "locks/", func(o target.ObjectInfo) error { return b.Delete(ctx, o.Key) })
	r, err := target.Open(ctx, b, target.OpenOptions{Host: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// consistent checks r (reading every chunk) and that every point in it
// restores to what was written.
func consistent(t *testing.T, r *target.Repository, want map[string]*testenv.Content, what string) []string {
	ctx := context.Background()
	if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("%s: check: %v %+v", what, err, rep)
	}
	pts, err := r.Points(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range pts {
		restoreEquals(t, r, m.ID, want[m.ID])
		ids = append(ids, m.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestCrashAtEveryStep kills prune, GC with repack and copy after each
// change they make to the repository in turn (not at random moments: at
// every one), then opens the repository as the next process does and
// checks: it is consistent (check --read-data), every point in it
// restores byte-exact, no point was lost that the operation was not
// meant to remove, and the operation run again completes.
func TestCrashAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	ctx := context.Background()
	prune := func(r *target.Repository) error {
		_, err := r.Prune(ctx, "", target.Retention{KeepLast: 2}, false)
		return err
	}
	repacked := 0
	gc := func(r *target.Repository) error {
		st, err := r.GC(ctx, target.GCOptions{Grace: -1})
		repacked = st.Repacked
		return err
	}
	// Which chunks share a pack depends on the writers' order: write the
	// repository until pruning leaves GC a pack to repack.
	var cr, pruned *crashRepo
	for try := 0; try < 10 && repacked == 0; try++ {
		cr = newCrashRepo(t)
		// GC's state: the first two points pruned.
		pruned = &crashRepo{dir: filepath.Join(t.TempDir(), "pruned"), want: cr.want, ids: cr.ids[2:]}
		if err := os.CopyFS(pruned.dir, os.DirFS(cr.dir)); err != nil {
			t.Fatal(err)
		}
		if err := prune(restart(t, pruned.dir)); err != nil {
			t.Fatal(err)
		}
		r, _, _ := pruned.clone(t, -1)
		if err := gc(r); err != nil {
			t.Fatal(err)
		}
	}
	keep := cr.ids[2:] // keep_last 2
	dstTemplate := t.TempDir()
	{
		b, _ := local.Open(local.Config{Path: dstTemplate})
		initRepo(t, b, target.InitOptions{PackSize: 1 << 20})
	}
	for _, op := range []struct {
		name string
		run  func(t *testing.T, budget int) (changes int, dir string, want []string)
	}{
		{"prune", func(t *testing.T, budget int) (int, string, []string) {
			r, cb, dir := cr.clone(t, budget)
			err := prune(r)
			return cb.done, dir, expect(t, err, budget, keep)
		}},
		{"gc with repack", func(t *testing.T, budget int) (int, string, []string) {
			r, cb, dir := pruned.clone(t, budget)
			err := gc(r)
			return cb.done, dir, expect(t, err, budget, keep)
		}},
		{"copy", func(t *testing.T, budget int) (int, string, []string) {
			src, _, _ := cr.clone(t, -1)
			dstCrash := &crashRepo{dir: dstTemplate}
			dst, cb, dir := dstCrash.clone(t, budget)
			_, _, err := target.Copy(ctx, src, dst, cr.ids[3], target.CopyOptions{})
			return cb.done, dir, expect(t, err, budget, nil) // there once run again
		}},
	} {
		row := &testenv.FaultRow{Fault: "the process killed after each change " + op.name + " makes to the repository, in turn (local target)",
			Checked: "the repository is consistent (check --read-data), every point in it restores byte-exact, none lost that it was not to remove, the operation run again completes"}
		t.Run(op.name, func(t *testing.T) {
			total, _, _ := op.run(t, -1)
			if op.name == "gc with repack" && repacked == 0 {
				t.Fatal("GC repacks nothing in this repository: the test does not cover repack")
			}
			row.Iterations = total
			row.Record(t)
			for k := range total {
				_, dir, want := op.run(t, k)
				what := fmt.Sprintf("%s killed after %d of %d changes", op.name, k, total)
				r := restart(t, dir)
				ids := consistent(t, r, cr.want, what)
				for _, id := range want {
					if !slices.Contains(ids, id) {
						t.Fatalf("%s: point %s is gone", what, id)
					}
				}
				// Run again: it completes and leaves what it should.
				if op.name == "copy" {
					src := restart(t, cr.dir)
					if _, _, err := target.Copy(ctx, src, r, cr.ids[3], target.CopyOptions{}); err != nil {
						t.Fatalf("%s: copy again: %v", what, err)
					}
				} else if err := prune(r); err != nil {
					t.Fatalf("%s: prune again: %v", what, err)
				}
				if err := gc(r); err != nil {
					t.Fatalf("%s: gc again: %v", what, err)
				}
				ids = consistent(t, r, cr.want, what+", then run again")
				if op.name == "copy" && !slices.Equal(ids, cr.ids[3:]) {
					t.Fatalf("%s, then run again: points %v, want %v", what, ids, cr.ids[3:])
				}
				if op.name != "copy" && !slices.Equal(ids, slices.Sorted(slices.Values(keep))) {
					t.Fatalf("%s, then run again: points %v, want %v", what, ids, keep)
				}
			}
			testenv.Report(t, "%s killed after each of its %d changes: nothing lost", op.name, total)
		})
	}
}

// expect is the points that must be there after an operation that was
// to leave after, killed after budget changes (-1: not killed: it must
// have succeeded).
func expect(t *testing.T, err error, budget int, after []string) []string {
	t.Helper()
	if budget < 0 {
		if err != nil {
			t.Fatalf("not killed: %v", err)
		}
		return after
	}
	if err != nil && !errors.Is(err, errCrashed) {
		t.Fatalf("killed after %d changes: the error is not the crash: %v", budget, err)
	}
	return after
}
