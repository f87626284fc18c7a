package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/target/s3"
	"github.com/virtkeep/virtkeep/target/secret"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// BenchmarkRepositoryScale: what a backup costs against the size of its
// target. Through the real virtkeepd, a small running VM (64 MiB disk) is
// backed up into two S3 buckets 20 ms away (testenv's delaying proxy, each
// way): one empty, one already holding N points (VIRTKEEP_SCALE_POINTS,
// default 10,000) of 100 other domains, dated over the year before
// yesterday, 2,000 of them (N/5) in packs of their own. Rows, side by side: the full (the host new to the big bucket
// reads every manifest once), then incrementals after 4 MiB of writes:
// with the metadata cache warm, and with state_dir/cache deleted (cold);
// and the big bucket's list of points in a catalog rebuild. The last
// incremental of each bucket restores byte-exact. -benchtime 1x.
func BenchmarkRepositoryScale(b *testing.B) {
	env := vm.Libvirt(b)
	bin, dbin := binaries(b)
	srv := testenv.S3(b)
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("VIRTKEEP_SCALE_POINTS")); err == nil && v > 0 {
		n = v
	}
	dom := env.NewDomain(b, vm.DomainSpec{Start: true, Disks: []vm.DiskSpec{{Size: 64 << 20, Fill: testenv.Fill{Random: 0.5, Hole: 0.5}}}})
	dir := dom.Dir
	seedStart := time.Now()
	packs, other := seedPoints(b, srv, "vkbig", n, n/5)
	b.Logf("seeded %d points in %d packs in %.1fs", n, packs, time.Since(seedStart).Seconds())
	proxy := testenv.NewDelayProxy(b, srv.Endpoint, 20*time.Millisecond)
	os.WriteFile(filepath.Join(dir, "s3.secret"), []byte(srv.SecretKey+"\n"), 0o600)
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_dir: %[1]s/state
libvirt_uri: %[2]s
socket: %[1]s/d.sock
targets:
  - {name: empty, kind: s3, endpoint: %[3]s, bucket: vkempty, prefix: repo, region: %[4]s, access_key: %[5]s, secret_key_file: %[1]s/s3.secret, insecure: true, path_style: true}
  - {name: big, kind: s3, endpoint: %[3]s, bucket: vkbig, prefix: repo, region: %[4]s, access_key: %[5]s, secret_key_file: %[1]s/s3.secret, insecure: true, path_style: true}
`, dir, vm.URI(), proxy.Addr, srv.Region, srv.AccessKey)), 0o600)
	d := startDaemon(b, dbin, cfg)
	timed := func(args ...string) (time.Duration, string) {
		start := time.Now()
		code, out, errw := cli(b, bin, cfg, args...)
		if code != 0 {
			b.Fatalf("%v: %d %s %s", args, code, out, errw)
		}
		return time.Since(start), strings.TrimSpace(out)
	}
	round := 0
	inc := func(tgt string) (time.Duration, string) {
		round++
		if err := dom.Write(context.Background(), "vda", int64(round)*5<<20, 4<<20, byte(round)); err != nil {
			b.Fatal(err)
		}
		return timed("backup", dom.Name, "--target", tgt, "--level", "inc", "--wait")
	}
	type row struct{ full, warm, cold time.Duration }
	var rows [2]row
	var last, want [2]string
	for i, tgt := range []string{"empty", "big"} {
		rows[i].full, _ = timed("backup", dom.Name, "--target", tgt, "--level", "full", "--wait")
		rows[i].warm, _ = inc(tgt)
		if err := os.RemoveAll(filepath.Join(dir, "state", "cache")); err != nil {
			b.Fatal(err)
		}
		rows[i].cold, _ = inc(tgt)
		var w2 time.Duration
		w2, last[i] = inc(tgt)
		want[i] = dom.Disks[0].ExpectedSHA256()
		rows[i].warm = min(rows[i].warm, w2)
	}
	for i, p := range last {
		to := filepath.Join(dir, fmt.Sprintf("restore-%d", i))
		timed("restore", p, "--to", to, "--disk", "vda", "--format", "raw")
		if got, err := testenv.ImageSHA256(b.Context(), filepath.Join(to, "vda.raw"), "raw"); err != nil || got != want[i] {
			b.Fatalf("restore of %s differs from the disk: %v", p, err)
		}
		os.RemoveAll(to)
	}
	if path := os.Getenv("VIRTKEEP_SCALE_LOG"); path != "" {
		if err := os.WriteFile(path, []byte(d.log.String()), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	rebuild, _ := timed("catalog", "rebuild", "--target", "big")
	restoreOther := func() time.Duration {
		to := filepath.Join(dir, "restore-other")
		d, _ := timed("restore", other, "--to", to, "--disk", "vda", "--format", "raw")
		if fi, err := os.Stat(filepath.Join(to, "vda.raw")); err != nil || fi.Size() != 64<<10 {
			b.Fatalf("restore of %s: %v", other, err)
		}
		os.RemoveAll(to)
		return d
	}
	if err := os.RemoveAll(filepath.Join(dir, "state", "cache")); err != nil {
		b.Fatal(err)
	}
	coldOpen := restoreOther()
	warmOpen := restoreOther()
	x := func(a, e time.Duration) float64 { return a.Seconds() / e.Seconds() }
	b.Logf("\nrepository scale, S3 at 20 ms each way, small VM (64 MiB):\n"+
		"%-34s %9s %9s %7s\n%-34s %8.2fs %8.2fs %6.2fx\n%-34s %8.2fs %8.2fs %6.2fx   (goal <= 1.2x)\n%-34s %8.2fs %8.2fs %6.2fx\n"+
		"catalog rebuild of the big bucket (%d points): %.2fs\n"+
		"restore of a 64 KiB point from the big bucket (%d packs): %.2fs with the cache deleted, %.2fs warm (goal <= 2s)",
		"", "empty", fmt.Sprintf("%d pts", n+4), "ratio",
		"full (big: manifests read once)", rows[0].full.Seconds(), rows[1].full.Seconds(), x(rows[1].full, rows[0].full),
		"incremental, cache warm", rows[0].warm.Seconds(), rows[1].warm.Seconds(), x(rows[1].warm, rows[0].warm),
		"incremental, cache deleted", rows[0].cold.Seconds(), rows[1].cold.Seconds(), x(rows[1].cold, rows[0].cold),
		n+4, rebuild.Seconds(), packs, coldOpen.Seconds(), warmOpen.Seconds())
}

// seedPoints writes n points of 100 domains into bucket (prefix repo) of
// srv directly, uniq of them with data of their own (a pack each), and
// returns how many packs it holds and the ID of the first point.
func seedPoints(b *testing.B, srv *testenv.S3Server, bucket string, n, uniq int) (int, string) {
	ctx := context.Background()
	be, err := s3.Open(ctx, s3.Config{Endpoint: srv.Endpoint, Bucket: bucket, Prefix: "repo", Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: secret.Value(srv.SecretKey), Insecure: true, PathStyle: true, CreateBucket: true})
	if err != nil {
		b.Fatal(err)
	}
	// Written into the gateway's directory as files (it serves them as
	// the bucket's objects), faster than through its HTTP.
	lb, err := local.Open(local.Config{Path: filepath.Join(srv.Dir, bucket, "repo")})
	if err != nil {
		b.Fatal(err)
	}
	if err := target.Init(ctx, lb, target.InitOptions{}); err != nil {
		b.Fatal(err)
	}
	r, err := target.Open(ctx, lb, target.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	// The shared points first: every commit lists the packs, which the
	// unique ones add.
	first, err := seedPoint(ctx, r, 0, n, false)
	if err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	next.Store(1)
	errs := make(chan error, 16)
	for range 16 {
		go func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					errs <- nil
					return
				}
				if _, err := seedPoint(ctx, r, i, n, i >= n-uniq); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	packs, points := 0, 0
	_ = be.List(ctx, "packs/", func(target.ObjectInfo) error { packs++; return nil })
	_ = be.List(ctx, "points/", func(target.ObjectInfo) error { points++; return nil })
	if points != n {
		b.Fatalf("the S3 server lists %d points of the %d written", points, n)
	}
	return packs, first
}

// seedTime dates point i of n: a year of them, a day ago the newest, as a
// year of nightly backups of a fleet would be.
func seedTime(i, n int) time.Time {
	return time.Now().Add(-24*time.Hour - time.Duration(n-i)*(365*24*time.Hour/time.Duration(n)))
}

// seedPoint writes point i of n: one 64 KiB disk, of data its own when
// uniq.
func seedPoint(ctx context.Context, r *target.Repository, i, n int, uniq bool) (string, error) {
	d := i % 100
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: fmt.Sprintf("other%02d", d), DomainUUID: fmt.Sprintf("00000000-0000-4000-8000-%012d", d),
		Level: target.LevelFull, Consistency: "crash", DomainXML: strings.Repeat("<domain/>", 300), Time: seedTime(i, n)})
	if err != nil {
		return "", err
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", Format: "raw", VirtualSize: 64 << 10})
	if err != nil {
		return "", err
	}
	data := make([]byte, 64<<10)
	if uniq {
		copy(data, fmt.Sprintf("point %d", i))
	} else {
		copy(data, "shared")
	}
	if err := dw.WriteChunk(ctx, 0, data); err != nil {
		return "", err
	}
	if err := dw.Close(ctx); err != nil {
		return "", err
	}
	m, err := pw.Commit(ctx)
	if err != nil {
		return "", err
	}
	return m.ID, nil
}
