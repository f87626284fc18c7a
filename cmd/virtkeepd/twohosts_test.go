package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// fleetHost is one virtkeepd of TestTwoDaemonsOneBucket with the domains
// it backs up, and what each point it took must restore to.
type fleetHost struct {
	t    *testing.T
	name string
	bin  string
	cfg  string
	d    *daemonProc
	mu   sync.Mutex
	want map[string]string // point ID -> SHA-256 of vda when it was taken
}

// hostConfig is a host's configuration: its own state, socket and policy
// over doms, and the shared bucket (one key file: one repository).
func hostConfig(t *testing.T, dir string, s3 *testenv.S3Server, shared string, doms ...*vm.Domain) string {
	var names []string
	for _, d := range doms {
		names = append(names, d.Name)
	}
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_dir: %[1]s/state
libvirt_uri: %[2]s
socket: %[1]s/d.sock
targets:
  - {name: shared, kind: s3, endpoint: %[3]s, bucket: vkfleet, region: %[4]s, access_key: %[5]s, secret_key_file: %[6]s/s3.secret,
     insecure: true, path_style: true, key_file: %[6]s/fleet.key, pack_size: 1MiB}
policies:
  - name: keep
    domains: [%[7]s]
    schedule: "0 3 1 1 *"
    targets: [shared]
    retention: [{keep_last: 2}]
`, dir, vm.URI(), s3.Endpoint, s3.Region, s3.AccessKey, shared, strings.Join(names, ", "))), 0o600)
	return cfg
}

// otherMachine runs a command as another host would: in its own UTS and
// mount namespaces, with hostname host and the machine ID in idFile.
func otherMachine(host, idFile string) []string {
	return []string{"unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c",
		`hostname "$1" && mount --bind "$2" /etc/machine-id && shift 2 && exec "$@"`, "sh", host, idFile}
}

// backup takes a backup of dom through h and records what its point
// holds; it returns the point.
func (h *fleetHost) backup(dom *vm.Domain, level string) (api.Point, error) {
	code, out, errw := cli(h.t, h.bin, h.cfg, "--json", "backup", dom.Name, "--wait", "--level", level)
	var p api.Point
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil || p.ID == "" {
		return p, fmt.Errorf("%s: backup %s: exit %d %s %s", h.name, dom.Name, code, out, errw)
	}
	vda, _ := dom.Disk("vda")
	h.mu.Lock()
	defer h.mu.Unlock()
	h.want[p.ID] = vda.Content.SHA256()
	return p, nil
}

// points lists the shared target's points of domain uuid, as h sees them.
func (h *fleetHost) points(uuid string) ([]api.Point, error) {
	code, out, errw := cli(h.t, h.bin, h.cfg, "--json", "list", "--target", "shared")
	var ps, mine []api.Point
	if code != 0 || json.Unmarshal([]byte(out), &ps) != nil {
		return nil, fmt.Errorf("%s: list: exit %d %s %s", h.name, code, out, errw)
	}
	for _, p := range ps {
		if uuid == "" || p.DomainUUID == uuid {
			mine = append(mine, p)
		}
	}
	return mine, nil
}

// write overwrites 12 chunks of 256 KiB of round's 4 MiB of the disk,
// shifted by one chunk more each round. Once the points before are pruned,
// the packs that held the old data at the region's edges are mostly dead
// (whether a pack holds three or four chunks), and GC repacks them.
func write(dom *vm.Domain, round int) error {
	off := int64(round%5)<<22 + int64(round%4)<<18
	return dom.Write(context.Background(), "vda", off, 3<<20, byte(round))
}

// TestTwoDaemonsOneBucket: two virtkeepd, the second in its own UTS and
// mount namespaces (another hostname, another machine ID), each with its
// own state, on one encrypted S3 bucket. Each backs up its own VM round
// after round while the first also prunes and garbage-collects (grace
// shortened, so that GC repacks what prune freed). Then a VM the first
// host backed up moves to the second (same UUID, its disk moved, libvirt's
// checkpoints left behind), and the second continues its chain with an
// incremental. At the end every point of both hosts restores byte-exact
// through either daemon, verify --read-data passes, and no point of the
// second host was ever removed by the first.
func TestTwoDaemonsOneBucket(t *testing.T) {
	rounds := testenv.Iterations(3)
	row := &testenv.FaultRow{Fault: "two virtkeepd (the second with its own hostname and machine ID, in its own namespaces) on one S3 bucket, each backing up its VM in a loop while the first prunes and GCs with repack; then a VM moves from the first to the second",
		Iterations: rounds,
		Checked:    "every point of both hosts restores byte-exact through either daemon; verify --read-data passes; the first never removed a point of the second; the moved VM's first backup on the second host is an incremental of the first host's point"}
	row.Record(t)
	s3 := testenv.S3(t)
	env := vm.Libvirt(t)
	newDomain := func(seed uint64) *vm.Domain { // each its own data: nothing dedups across them
		return env.NewDomain(t, vm.DomainSpec{Start: true, Disks: []vm.DiskSpec{{Size: 24 << 20, Seed: seed, Fill: testenv.Fill{Random: 1}}}})
	}
	domA, domB, moving := newDomain(101), newDomain(202), newDomain(303)
	shared := testenv.TempDir(t)
	os.WriteFile(filepath.Join(shared, "s3.secret"), []byte(s3.SecretKey+"\n"), 0o600)
	idFile := filepath.Join(shared, "machine-id")
	os.WriteFile(idFile, []byte("5e1f0b2c7d8a4e6f9a0b1c2d3e4f5a6b\n"), 0o444)
	bin, dbin := binaries(t)

	a := &fleetHost{t: t, name: "host A", bin: bin, want: map[string]string{}}
	a.cfg = hostConfig(t, domA.Dir, s3, shared, domA, moving)
	a.d = startDaemonAs(t, nil, []string{"VIRTKEEP_TEST_GC_GRACE=1ms"}, dbin, a.cfg)
	for _, d := range []*vm.Domain{domA, moving} {
		if _, err := a.backup(d, "auto"); err != nil { // creates the repository and its key
			t.Fatal(err)
		}
	}
	b := &fleetHost{t: t, name: "host B", bin: bin, want: map[string]string{}}
	b.cfg = hostConfig(t, domB.Dir, s3, shared, domB, moving)
	b.d = startDaemonAs(t, otherMachine("vk-other-host", idFile), nil, dbin, b.cfg)

	self, _ := os.Hostname()
	repacked := 0
	// upkeep is host A's prune and GC after each of its backups.
	upkeep := func(i int) error {
		code, out, errw := cli(t, bin, a.cfg, "--json", "prune", "--target", "shared")
		var decs []api.Decision
		if code != 0 || json.Unmarshal([]byte(out), &decs) != nil {
			return fmt.Errorf("host A: prune: exit %d %s %s", code, out, errw)
		}
		for _, d := range decs {
			if d.DomainUUID == domB.UUID || d.Host != self {
				t.Errorf("host A's prune looked at a point of host B: %+v", d)
			}
		}
		code, out, errw = cli(t, bin, a.cfg, "--json", "gc", "--target", "shared")
		var gc map[string]api.GCReport
		if code != 0 || json.Unmarshal([]byte(out), &gc) != nil {
			return fmt.Errorf("host A: gc: exit %d %s %s", code, out, errw)
		}
		t.Logf("host A: round %d: prune %d decisions, gc %+v", i, len(decs), gc["shared"])
		repacked += gc["shared"].Repacked
		return nil
	}
	var wg sync.WaitGroup
	loop := func(h *fleetHost, dom *vm.Domain, after func(int) error) {
		defer wg.Done()
		for i := 1; i <= rounds && !t.Failed(); i++ {
			err := write(dom, i)
			if err == nil {
				_, err = h.backup(dom, "auto")
			}
			if err == nil && after != nil {
				err = after(i)
			}
			if err != nil {
				t.Error(err)
				return
			}
		}
	}
	wg.Add(2)
	go loop(a, domA, upkeep)
	go loop(b, domB, nil)
	wg.Wait()
	if t.Failed() {
		t.Fatalf("host A:\n%s\nhost B:\n%s", a.d.log.String(), b.d.log.String())
	}
	if repacked == 0 {
		t.Errorf("host A's GC never repacked a pack in %d rounds: the test does not exercise repack", rounds)
	}
	testenv.Report(t, "two hosts, %d rounds: host A's GC repacked %d packs", rounds, repacked)

	// The VM moves from host A to host B.
	lastA, _ := a.points(moving.UUID)
	if err := moving.Move(testenv.TempDir(t)); err != nil {
		t.Fatal(err)
	}
	if err := write(moving, 1); err != nil {
		t.Fatal(err)
	}
	first, err := b.backup(moving, "inc")
	if err != nil {
		t.Fatalf("%v\n%s", err, b.d.log.String())
	}
	ids := jobIDs(t, bin, b.cfg)
	j := jobInfo(t, bin, b.cfg, ids[len(ids)-1])
	if first.Level != "inc" || first.Parent != lastA[len(lastA)-1].ID || j.Result == nil || j.Result.Point == nil || j.Result.Point.ID != first.ID || len(j.Result.FullReasons) > 0 {
		t.Errorf("the moved VM's first backup on host B does not continue host A's chain: level %s, parent %s (host A's last point %s), job %+v",
			first.Level, first.Parent, lastA[len(lastA)-1].ID, j.Result)
	}
	testenv.Report(t, "the moved VM's first backup on host B: %s of %s, read %d of %d bytes", first.Level, first.Parent, first.Disks[0].BytesRead, first.Disks[0].VirtualSize)

	// Host B knows itself by its own name: its prune looks at its points only.
	code, out, errw := cli(t, bin, b.cfg, "--json", "prune", "--target", "shared", "--dry-run")
	var decs []api.Decision
	if code != 0 || json.Unmarshal([]byte(out), &decs) != nil || len(decs) == 0 {
		t.Fatalf("host B: prune --dry-run: exit %d %s %s", code, out, errw)
	}
	for _, d := range decs {
		if d.Host != "vk-other-host" || d.DomainUUID == domA.UUID {
			t.Errorf("host B's prune looked at a point host B did not write: %+v", d)
		}
	}

	// Nothing of host B's was removed, and everything restores. Host A's
	// catalog learns the bucket's points of other hosts by a rebuild.
	if code, out, errw := cli(t, bin, a.cfg, "catalog", "rebuild", "--target", "shared"); code != 0 {
		t.Fatalf("host A: catalog rebuild: %d %s %s", code, out, errw)
	}
	all, err := a.points("")
	if err != nil {
		t.Fatal(err)
	}
	there := map[string]bool{}
	for _, p := range all {
		there[p.ID] = true
	}
	for id := range b.want {
		if !there[id] {
			t.Errorf("host B's point %s is gone", id)
		}
	}
	if code, out, errw := cli(t, bin, b.cfg, "verify", "--all", "--target", "shared", "--read-data"); code != 0 {
		t.Fatalf("verify --read-data through host B: %d %s %s", code, out, errw)
	}
	restored := 0
	for _, p := range all {
		want, ok := a.want[p.ID]
		if !ok {
			want, ok = b.want[p.ID]
		}
		if !ok {
			t.Errorf("point %s of %s is in the bucket but neither host took it", p.ID, p.Domain)
			continue
		}
		h := []*fleetHost{a, b}[restored%2] // through either daemon
		raw := filepath.Join(shared, "export.raw")
		if code, _, errw := cli(t, bin, h.cfg, "export", p.ID, "--target", "shared", "--disk", "vda", "--format", "raw", "-o", raw); code != 0 {
			t.Fatalf("%s: export %s: %d %s", h.name, p.ID, code, errw)
		}
		got, _ := testenv.ImageSHA256(context.Background(), raw, "raw")
		os.Remove(raw)
		if got != want {
			t.Errorf("point %s of %s does not restore byte-exact through %s", p.ID, p.Domain, h.name)
		}
		restored++
	}
	testenv.Report(t, "two hosts: %d points restored byte-exact (host A took %d, host B %d)", restored, len(a.want), len(b.want))
	if slices.ContainsFunc(all, func(p api.Point) bool { return p.Damaged != "" }) {
		t.Error("a point is marked damaged")
	}
}
