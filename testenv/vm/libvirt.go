package vm

import (
	"context"
	"errors"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/testenv"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// URI is the libvirt connection tests use. VIRTKEEP_LIBVIRT_URI overrides it.
func URI() string {
	if u := os.Getenv("VIRTKEEP_LIBVIRT_URI"); u != "" {
		return u
	}
	return "qemu:///system"
}

// Env is a connection to the real libvirt.
type Env struct {
	Conn *libvirt.Connect
	URI  string
}

// Libvirt connects to libvirt for t, or skips (fails in CI) when it cannot.
// The connection is closed when t ends.
func Libvirt(t testing.TB) *Env {
	t.Helper()
	testenv.Integration(t)
	testenv.RequireCommands(t, "qemu-system-x86_64", "qemu-img", "qemu-io", "qemu-nbd", "nbdcopy")
	uri := URI()
	conn, err := libvirt.NewConnect(uri)
	if err != nil {
		testenv.Unavailable(t, "libvirt %s: %v (is libvirtd running? make deps starts it)", uri, err)
	}
	t.Cleanup(func() { _, _ = conn.Close() })
	return &Env{Conn: conn, URI: uri}
}

// DomainSpec describes a test domain.
type DomainSpec struct {
	Disks     []DiskSpec // at least one
	MemoryMiB uint       // default 64
	// Start starts the domain paused (a domain with no OS spins a core in
	// firmware when running). Backups, bitmaps and qemu-io writes work on a
	// paused domain.
	Start bool
	// Running starts the domain and lets it run.
	Running bool
	// Devices is extra device XML put into <devices> as it is.
	Devices string
}

// Domain is a persistent libvirt domain made for one test, removed with its
// checkpoint metadata and files when the test ends.
type Domain struct {
	Name  string
	UUID  string
	Dom   *libvirt.Domain
	Disks []*Disk
	Dir   string // where its images live

	env *Env
}

// accelType is the libvirt domain type to use: kvm when /dev/kvm is usable by
// QEMU, qemu (TCG) otherwise. VIRTKEEP_TESTENV_ACCEL=qemu forces TCG.
func accelType() string {
	if a := os.Getenv("VIRTKEEP_TESTENV_ACCEL"); a != "" {
		return a
	}
	if fi, err := os.Stat("/dev/kvm"); err == nil && fi.Mode().Perm()&0o006 == 0o006 {
		return "kvm"
	}
	return "qemu"
}

// NewDomain creates and defines a domain with the disks spec asks for, and
// starts it if asked. On failure it dumps the domain's state and logs.
func (e *Env) NewDomain(t testing.TB, spec DomainSpec) *Domain {
	t.Helper()
	if len(spec.Disks) == 0 {
		t.Fatalf("testenv: domain needs at least one disk")
	}
	ctx := context.Background()
	dir := testenv.TempDir(t)
	disks, err := createDisks(ctx, dir, spec.Disks)
	if err != nil {
		t.Fatal(err)
	}
	name := "vk-" + filepath.Base(dir)
	xml := domainXML(name, spec.MemoryMiB, disks, spec.Devices)
	dom, err := e.Conn.DomainDefineXML(xml)
	if err != nil {
		t.Fatalf("testenv: define domain %s: %v\n%s", name, err, xml)
	}
	uuid, _ := dom.GetUUIDString()
	d := &Domain{Name: name, UUID: uuid, Dom: dom, Disks: disks, Dir: dir, env: e}
	t.Cleanup(func() { d.cleanup(t) })
	if spec.Start || spec.Running {
		if err := d.Start(!spec.Running); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func domainXML(name string, memMiB uint, disks []*Disk, devices string) string {
	if memMiB == 0 {
		memMiB = 64
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<domain type='%s'>\n  <name>%s</name>\n  <memory unit='MiB'>%d</memory>\n  <vcpu>1</vcpu>\n", accelType(), name, memMiB)
	b.WriteString("  <os><type arch='x86_64' machine='q35'>hvm</type></os>\n  <on_crash>destroy</on_crash>\n  <devices>\n")
	b.WriteString("    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n")
	for _, d := range disks {
		fmt.Fprintf(&b, "    <disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='%s' bus='virtio'/></disk>\n",
			d.Format, html.EscapeString(d.Path), d.Target)
	}
	b.WriteString(devices)
	b.WriteString("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n  </devices>\n</domain>\n")
	return b.String()
}

// Start starts the domain, paused if paused is set, and learns the QEMU
// device ids of its disks.
func (d *Domain) Start(paused bool) error {
	flags := libvirt.DOMAIN_NONE
	if paused {
		flags = libvirt.DOMAIN_START_PAUSED
	}
	if err := d.Dom.CreateWithFlags(flags); err != nil {
		return fmt.Errorf("testenv: start domain %s: %w", d.Name, err)
	}
	return d.learnAliases()
}

func (d *Domain) learnAliases() error {
	x, err := d.Dom.GetXMLDesc(0)
	if err != nil {
		return fmt.Errorf("testenv: domain %s xml: %w", d.Name, err)
	}
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(x); err != nil {
		return fmt.Errorf("testenv: domain %s xml: %w", d.Name, err)
	}
	for _, disk := range d.Disks {
		disk.qdev = ""
	}
	if dx.Devices == nil {
		return nil
	}
	for _, xd := range dx.Devices.Disks {
		if xd.Target == nil || xd.Alias == nil {
			continue
		}
		if disk, err := findDisk(d.Disks, xd.Target.Dev); err == nil {
			disk.qdev = xd.Alias.Name
		}
	}
	return nil
}

// Destroy stops the domain at once (power off).
func (d *Domain) Destroy() error {
	for _, disk := range d.Disks {
		disk.qdev = ""
	}
	if err := d.Dom.Destroy(); err != nil {
		return fmt.Errorf("testenv: destroy domain %s: %w", d.Name, err)
	}
	return nil
}

// Suspend pauses the domain's vCPUs.
func (d *Domain) Suspend() error {
	if err := d.Dom.Suspend(); err != nil {
		return fmt.Errorf("testenv: suspend domain %s: %w", d.Name, err)
	}
	return nil
}

// Resume lets the domain's vCPUs run.
func (d *Domain) Resume() error {
	if err := d.Dom.Resume(); err != nil {
		return fmt.Errorf("testenv: resume domain %s: %w", d.Name, err)
	}
	return nil
}

// State returns the domain's libvirt state.
func (d *Domain) State() (libvirt.DomainState, error) {
	s, _, err := d.Dom.GetState()
	if err != nil {
		return 0, fmt.Errorf("testenv: domain %s state: %w", d.Name, err)
	}
	return s, nil
}

// Disk returns the disk with the given target name.
func (d *Domain) Disk(target string) (*Disk, error) { return findDisk(d.Disks, target) }

// HMP runs an HMP command line in the domain's QEMU.
func (d *Domain) HMP(ctx context.Context, line string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	out, err := d.Dom.QemuMonitorCommand(line, libvirt.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
	if err != nil {
		return "", fmt.Errorf("testenv: domain %s: hmp: %w", d.Name, err)
	}
	return out, nil
}

// Write writes n bytes of pattern at off into the running disk target and
// records it.
func (d *Domain) Write(ctx context.Context, target string, off, n int64, pattern byte) error {
	disk, err := d.Disk(target)
	if err != nil {
		return err
	}
	return writeDisk(ctx, d.HMP, disk, testenv.Write{Off: off, Len: n, Pattern: pattern})
}

// WriteZeroes writes zeroes (qemu-io write -z) at [off, off+n).
func (d *Domain) WriteZeroes(ctx context.Context, target string, off, n int64) error {
	disk, err := d.Disk(target)
	if err != nil {
		return err
	}
	return writeDisk(ctx, d.HMP, disk, testenv.Write{Off: off, Len: n, Zero: true})
}

func (d *Domain) cleanup(t testing.TB) {
	if t.Failed() {
		d.dump(t)
	}
	defer d.Dom.Free()
	if active, _ := d.Dom.IsActive(); active {
		if err := d.Dom.Destroy(); err != nil {
			t.Logf("testenv: destroy %s: %v", d.Name, err)
		}
	}
	if cps, err := d.Dom.ListAllCheckpoints(0); err == nil {
		for _, cp := range cps {
			_ = cp.Delete(libvirt.DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
			_ = cp.Free()
		}
	}
	err := d.Dom.UndefineFlags(libvirt.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA |
		libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.DOMAIN_UNDEFINE_NVRAM)
	if err != nil && !errors.Is(err, libvirt.ERR_NO_DOMAIN) {
		t.Logf("testenv: undefine %s: %v", d.Name, err)
	}
}

// dump logs what is needed to understand a failure: state, XML, checkpoints
// and the tail of QEMU's log.
func (d *Domain) dump(t testing.TB) {
	state, reason, err := d.Dom.GetState()
	t.Logf("testenv: domain %s state=%d reason=%d err=%v", d.Name, state, reason, err)
	if x, err := d.Dom.GetXMLDesc(0); err == nil {
		t.Logf("testenv: domain %s XML:\n%s", d.Name, x)
	}
	if cps, err := d.Dom.ListAllCheckpoints(0); err == nil {
		for _, cp := range cps {
			n, _ := cp.GetName()
			t.Logf("testenv: checkpoint %s", n)
			_ = cp.Free()
		}
	}
	if j, err := d.Dom.GetJobInfo(); err == nil {
		t.Logf("testenv: job type=%d", j.Type)
	}
	logPath := "/var/log/libvirt/qemu/" + d.Name + ".log"
	if b, err := os.ReadFile(logPath); err == nil {
		if len(b) > 8192 {
			b = b[len(b)-8192:]
		}
		t.Logf("testenv: %s:\n%s", logPath, b)
	}
	t.Logf("testenv: dumped at %s", time.Now().Format(time.RFC3339))
}

// Kill kills the domain's QEMU with SIGKILL, as a host crash would: dirty
// bitmaps are not saved. It waits until libvirt sees the domain shut off.
func (d *Domain) Kill() error {
	b, err := os.ReadFile("/run/libvirt/qemu/" + d.Name + ".pid")
	if err != nil {
		return fmt.Errorf("testenv: domain %s pid: %w", d.Name, err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 1 {
		return fmt.Errorf("testenv: domain %s pid file %q", d.Name, b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("testenv: kill domain %s: %w", d.Name, err)
	}
	for _, disk := range d.Disks {
		disk.qdev = ""
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if active, err := d.Dom.IsActive(); err == nil && !active {
			return nil
		}
	}
	return fmt.Errorf("testenv: domain %s still active after SIGKILL", d.Name)
}

// AttachDisk creates a disk and attaches it to the domain, live when it
// runs and in its persistent definition.
func (d *Domain) AttachDisk(ctx context.Context, spec DiskSpec) (*Disk, error) {
	if spec.Target == "" {
		return nil, fmt.Errorf("testenv: AttachDisk needs a target name")
	}
	if _, err := d.Disk(spec.Target); err == nil {
		return nil, fmt.Errorf("testenv: domain %s already has disk %s", d.Name, spec.Target)
	}
	disks, err := createDisks(ctx, d.Dir, []DiskSpec{spec})
	if err != nil {
		return nil, err
	}
	nd := disks[0]
	xml := fmt.Sprintf("<disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='%s' bus='virtio'/></disk>",
		nd.Format, html.EscapeString(nd.Path), nd.Target)
	flags := libvirt.DOMAIN_DEVICE_MODIFY_CONFIG
	if active, _ := d.Dom.IsActive(); active {
		flags |= libvirt.DOMAIN_DEVICE_MODIFY_LIVE
	}
	if err := d.Dom.AttachDeviceFlags(xml, flags); err != nil {
		return nil, fmt.Errorf("testenv: attach %s to %s: %w", nd.Target, d.Name, err)
	}
	d.Disks = append(d.Disks, nd)
	if active, _ := d.Dom.IsActive(); active {
		if err := d.learnAliases(); err != nil {
			return nil, err
		}
	}
	return nd, nil
}

// Resize grows disk target to size bytes (live, through libvirt).
func (d *Domain) Resize(target string, size int64) error {
	disk, err := d.Disk(target)
	if err != nil {
		return err
	}
	if err := d.Dom.BlockResize(target, uint64(size), libvirt.DOMAIN_BLOCK_RESIZE_BYTES); err != nil {
		return fmt.Errorf("testenv: resize %s of %s: %w", target, d.Name, err)
	}
	disk.size = size
	return disk.Content.Grow(size)
}

// RestartLibvirtd stops libvirtd and starts it again, as an upgrade of
// libvirt does; QEMU processes keep running. The environment's connection
// and the given domains' handles are made anew on the new daemon, so their
// cleanup works. Disruptive: every other test using libvirt at that moment
// sees its connection die, so tests that call it run alone (make test's
// second step).
func (e *Env) RestartLibvirtd(t testing.TB, doms ...*Domain) {
	t.Helper()
	_ = exec.Command("pkill", "-x", "libvirtd").Run()
	for deadline := time.Now().Add(30 * time.Second); exec.Command("pgrep", "-x", "libvirtd").Run() == nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("testenv: libvirtd did not stop")
		}
	}
	if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
		t.Fatalf("testenv: start libvirtd: %v %s", err, out)
	}
	var conn *libvirt.Connect
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, err := libvirt.NewConnect(e.URI)
		if err == nil {
			if _, err = c.GetLibVersion(); err == nil {
				conn = c
				break
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: libvirtd does not answer after its restart: %v", err)
		}
	}
	t.Cleanup(func() { _, _ = conn.Close() })
	e.Conn = conn
	for _, d := range doms {
		dom, err := conn.LookupDomainByUUIDString(d.UUID)
		if err != nil {
			t.Fatalf("testenv: domain %s after the restart: %v", d.Name, err)
		}
		d.Dom = dom
	}
}

// Move moves the domain as an operator moves a VM to another host whose
// libvirt knows nothing of it: the domain is shut down (QEMU stores its
// persistent dirty bitmaps in the qcow2 images), its definition and
// checkpoint metadata are removed, its images are moved into dir, and it
// is defined again there with the same name and UUID, and started paused.
// Its bitmaps travel with the images; its checkpoints do not.
func (d *Domain) Move(dir string) error {
	if active, _ := d.Dom.IsActive(); active {
		if err := d.Destroy(); err != nil {
			return err
		}
	}
	x, err := d.Dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return fmt.Errorf("testenv: domain %s xml: %w", d.Name, err)
	}
	if err := d.Dom.UndefineFlags(libvirt.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA); err != nil {
		return fmt.Errorf("testenv: undefine %s: %w", d.Name, err)
	}
	for _, disk := range d.Disks {
		to := filepath.Join(dir, filepath.Base(disk.Path))
		if err := os.Rename(disk.Path, to); err != nil {
			return fmt.Errorf("testenv: move %s: %w", disk.Path, err)
		}
		x = strings.ReplaceAll(x, "'"+html.EscapeString(disk.Path)+"'", "'"+html.EscapeString(to)+"'")
		disk.Path = to
	}
	dom, err := d.env.Conn.DomainDefineXML(x)
	if err != nil {
		return fmt.Errorf("testenv: define %s again: %w\n%s", d.Name, err, x)
	}
	if uuid, _ := dom.GetUUIDString(); uuid != d.UUID {
		return fmt.Errorf("testenv: %s defined again with UUID %s, not %s", d.Name, uuid, d.UUID)
	}
	_ = d.Dom.Free()
	d.Dom, d.Dir = dom, dir
	return d.Start(true)
}
