package target_test

import (
	"bufio"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// crashIterations is how many times TestCrashWriter kills a writer;
// VIRTKEEP_CRASH_ITERATIONS raises it (make reliability).
func crashIterations() int {
	if n, err := strconv.Atoi(os.Getenv("VIRTKEEP_CRASH_ITERATIONS")); err == nil && n > 0 {
		return n
	}
	return 15
}

// TestCrashWriter kills a writer process with SIGKILL at random moments,
// many times over, and checks after each kill that the repository is
// consistent and every point in it restores to exactly what was written.
func TestCrashWriter(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	(&testenv.FaultRow{Fault: "a writer process SIGKILLed at random moments of backups (fulls and incrementals, local target)", Iterations: crashIterations(),
		Checked: "after each kill the repository is consistent (check) and every point in it restores to exactly what was written"}).Record(t)
	dir := t.TempDir()
	ctx := context.Background()
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := target.Init(ctx, b, target.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	verified := map[string]bool{}
	kills := 0
	for i := 0; i < crashIterations(); i++ {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "VIRTKEEP_TARGET_CHILD=crash-writer", "VIRTKEEP_REPO="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Let the writer commit 0-2 points (speed varies with -race and
		// load), then kill it at a random moment of the next one.
		lines := bufio.NewScanner(out)
		for n := rng.IntN(3); n > 0; n-- {
			if !lines.Scan() {
				break
			}
		}
		time.Sleep(time.Duration(rng.IntN(250)) * time.Millisecond)
		_ = cmd.Process.Kill()
		_, _ = io.Copy(io.Discard, out) // EOF once the writer is dead
		err = cmd.Wait()
		if ps := cmd.ProcessState; ps != nil && ps.Exited() {
			t.Fatalf("writer exited on its own: %v", err)
		}
		kills++
		// The killed writer's lock is left behind; a check does not need
		// one. The next writer takes a shared lock, which the stale one
		// does not block.
		r, err := target.Open(ctx, b, target.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := r.Check(ctx, target.CheckOptions{ReadData: true})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			t.Fatalf("after kill %d: %v", kills, rep)
		}
		pts, err := r.Points(ctx, func(id string, err error) { t.Fatalf("point %s unreadable: %v", id, err) })
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range pts {
			if verified[m.ID] {
				continue
			}
			gen, _ := strconv.Atoi(m.Tags["gen"])
			restoreEquals(t, r, m.ID, crashGen(gen))
			verified[m.ID] = true
		}
		// Now and then, prune and collect garbage between crashes: torn
		// leftovers of killed writers must go without harming any point.
		if i%5 == 4 && len(pts) > 3 {
			// The killed writer's lock names a process that is gone, so it
			// does not block the exclusive lock.
			if _, err := r.Prune(ctx, "", target.Retention{KeepLast: 3}, false); err != nil {
				t.Fatal(err)
			}
			if _, err := r.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
				t.Fatal(err)
			}
			if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
				t.Fatalf("after prune and gc: %v %v", err, rep)
			}
		}
	}
	t.Logf("%d kills, %d points verified", kills, len(verified))
	if len(verified) == 0 {
		t.Fatal("no point was ever committed: the writer never got far enough to test anything")
	}
}
