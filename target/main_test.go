package target_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// TestMain lets the test binary play a child process: a writer that the
// crash test kills, or the benchmark's writer whose memory is measured.
func TestMain(m *testing.M) {
	switch os.Getenv("VIRTKEEP_TARGET_CHILD") {
	case "crash-writer":
		crashWriter(os.Getenv("VIRTKEEP_REPO"))
		os.Exit(0)
	case "bench-writer":
		os.Exit(benchWriter())
	}
	os.Exit(m.Run())
}

// crashGen is the content of generation g of the crash test's disk: a base
// layout plus g writes, all derived from g, so a checker can recompute what
// any point must hold from its tags.
func crashGen(g int) *testenv.Content {
	c, _ := testenv.NewContent(24<<20, 1234, testenv.Fill{})
	for i := 1; i <= g; i++ {
		off := int64(i*7919*4096) % (c.Size() - 300000)
		_ = c.Record(testenv.Write{Off: off, Len: 200000 + int64(i%7)*10000, Pattern: byte(i)})
	}
	return c
}

// crashWriter writes points forever (incrementals off the last point, or
// fulls), until it is killed.
func crashWriter(dir string) {
	ctx := context.Background()
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		panic(err)
	}
	r, err := target.Open(ctx, b, target.OpenOptions{Workers: 4})
	if err != nil {
		panic(err)
	}
	pts, _ := r.Points(ctx, nil)
	gen := 0
	last := ""
	if len(pts) > 0 {
		last = pts[len(pts)-1].ID
		gen, _ = strconv.Atoi(pts[len(pts)-1].Tags["gen"])
	}
	for {
		gen++
		c := crashGen(gen)
		prev := crashGen(gen - 1)
		level, base := target.LevelInc, last
		if gen%3 == 0 || last == "" {
			level, base = target.LevelFull, ""
		}
		pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "crash", Level: level, Parent: base, Tags: map[string]string{"gen": strconv.Itoa(gen)}})
		if err != nil {
			panic(err)
		}
		dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: c.Size(), Base: base})
		if err != nil {
			panic(err)
		}
		cs := int64(dw.ChunkSize())
		buf, old := make([]byte, cs), make([]byte, cs)
		for idx := int64(0); idx < dw.Chunks(); idx++ {
			_, _ = c.ReadAt(buf, idx*cs)
			if base != "" {
				_, _ = prev.ReadAt(old, idx*cs)
				if string(old) == string(buf) {
					continue
				}
			}
			if err := dw.WriteChunk(ctx, idx, buf); err != nil {
				panic(err)
			}
		}
		if err := dw.Close(ctx); err != nil {
			panic(err)
		}
		m, err := pw.Commit(ctx)
		if err != nil {
			panic(err)
		}
		last = m.ID
		fmt.Println("committed", m.ID, gen)
	}
}
