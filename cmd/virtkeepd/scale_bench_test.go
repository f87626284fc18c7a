package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// BenchmarkDaemonScale backs up, through the real virtkeepd, ten running
// VMs (1 GiB disks holding 256 MiB each) with a policy of concurrency 4,
// and one VM with 8 disks (256 MiB of data each), and measures the floor
// for the same bytes in the same run: nbdcopy of the same pull-mode
// exports, as many side by side as the backup reads (4 VMs; 8 disks),
// to files + sync. Restores of one disk of each are compared byte for
// byte, and the repository passes verify --read-data. -benchtime 1x.
func BenchmarkDaemonScale(b *testing.B) {
	env := vm.Libvirt(b)
	testenv.RequireCommands(b, "nbdcopy")
	bin, dbin := binaries(b)
	disk := vm.DiskSpec{Size: 1 << 30, Fill: testenv.Fill{Random: 0.25, Hole: 0.75}}
	var doms []*vm.Domain
	var names []string
	for i := range 10 {
		d := disk
		d.Seed = uint64(100 + i)
		doms = append(doms, env.NewDomain(b, vm.DomainSpec{Start: true, Disks: []vm.DiskSpec{d}}))
		names = append(names, doms[i].Name)
	}
	var eight []vm.DiskSpec
	for i := range 8 {
		eight = append(eight, vm.DiskSpec{Size: 512 << 20, Seed: uint64(200 + i), Fill: testenv.Fill{Random: 0.5, Hole: 0.5}})
	}
	wide := env.NewDomain(b, vm.DomainSpec{Start: true, Disks: eight})
	dir := wide.Dir
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_dir: %s/state
libvirt_uri: %s
socket: %s/d.sock
max_jobs: 4
max_jobs_per_target: 4
targets:
  - {name: local, kind: local, path: %s/repo, compression: none}
policies:
  - name: fleet
    domains: [%s]
    schedule: "0 3 1 1 *"
    targets: [local]
    concurrency: 4
`, dir, vm.URI(), dir, dir, strings.Join(names, ", "))), 0o600)
	startDaemon(b, dbin, cfg) // stopped by the benchmark's cleanup

	floor := func(ds []*vm.Domain, parallel int) time.Duration {
		var uris []string
		for _, dom := range ds {
			us, stop, err := dom.PullExport()
			if err != nil {
				b.Fatal(err)
			}
			defer stop()
			for _, u := range us {
				uris = append(uris, u)
			}
		}
		out := filepath.Join(dir, "floor")
		os.MkdirAll(out, 0o700)
		defer os.RemoveAll(out)
		cmd := exec.Command("sh", "-c", fmt.Sprintf(`printf '%%s\n' "$@" | xargs -P%d -n1 sh -c 'nbdcopy "$0" %s/$(echo "$0" | sha1sum | cut -c1-12).raw' && sync`, parallel, out), "floor")
		cmd.Args = append(cmd.Args, uris...)
		start := time.Now()
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("floor: %v %s", err, o)
		}
		return time.Since(start)
	}
	timed := func(args ...string) (time.Duration, string) {
		start := time.Now()
		code, out, errw := cli(b, bin, cfg, args...)
		if code != 0 {
			b.Fatalf("%v: %d %s %s", args, code, out, errw)
		}
		return time.Since(start), out
	}

	fleetFloor := floor(doms, 4)
	fleet, _ := timed("run", "fleet", "--wait")
	wideFloor := floor([]*vm.Domain{wide}, 8)
	wideRun, out := timed("backup", wide.Name, "--level", "full", "--wait")
	widePoint := strings.TrimSpace(out)

	// Byte-exact restores of one VM of the fleet and one disk of the wide one.
	_, out = timed("--json", "list", doms[3].Name)
	var ps []api.Point
	if err := json.Unmarshal([]byte(out), &ps); err != nil || len(ps) != 1 {
		b.Fatalf("list %s: %v %s", doms[3].Name, err, out)
	}
	fleetPoint := ps[0].ID
	for _, c := range []struct {
		point, disk string
		want        *vm.Disk
	}{{fleetPoint, "vda", doms[3].Disks[0]}, {widePoint, "vdf", wide.Disks[5]}} {
		to := filepath.Join(dir, "restore-"+c.disk)
		timed("restore", c.point, "--to", to, "--disk", c.disk, "--format", "raw")
		got, err := testenv.ImageSHA256(b.Context(), filepath.Join(to, c.disk+".raw"), "raw")
		if err != nil || got != c.want.ExpectedSHA256() {
			b.Fatalf("restore of %s %s differs: %v", c.point, c.disk, err)
		}
		os.RemoveAll(to)
	}
	timed("verify", "--all", "--read-data")
	x := func(a, f time.Duration) float64 { return a.Seconds() / f.Seconds() }
	b.Logf("\n10 VMs, concurrency 4, 2.5 GiB: %.2fs, floor %.2fs: %.2fx (goal <= 1.5x)\n1 VM, 8 disks, 2 GiB:          %.2fs, floor %.2fs: %.2fx",
		fleet.Seconds(), fleetFloor.Seconds(), x(fleet, fleetFloor), wideRun.Seconds(), wideFloor.Seconds(), x(wideRun, wideFloor))
	b.ReportMetric(x(fleet, fleetFloor), "fleet/floor")
	b.ReportMetric(x(wideRun, wideFloor), "8disks/floor")
}
