package vm

import (
	"context"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/testenv"
)

// GuestDir is where testenv/guest/build.sh caches the test guest's kernel
// and initramfs (make deps builds it). VIRTKEEP_TESTGUEST_DIR overrides it.
func GuestDir() string {
	if d := os.Getenv("VIRTKEEP_TESTGUEST_DIR"); d != "" {
		return d
	}
	return "/var/lib/virtkeep/testguest"
}

// GuestSpec describes a booted test guest.
type GuestSpec struct {
	// DataSize is the size of the ext4 data disk (vda), mounted on /data in
	// the guest (default 64 MiB).
	DataSize int64
	// Files are put on the data disk when it is made (mkfs.ext4 -d).
	Files map[string]string
	// NoAgent boots the guest without the agent's channel.
	NoAgent bool
}

// Guest is a domain booting the tiny Linux test guest: busybox,
// qemu-guest-agent, and an ext4 data disk on /data.
type Guest struct {
	*Domain
	Agent guestagent.LibvirtAgent
	// Console is the guest's serial console log.
	Console string
}

// NewGuest boots the test guest under TCG (the nested /dev/kvm here hangs
// real kernels) and waits until its agent answers.
func (e *Env) NewGuest(t testing.TB, spec GuestSpec) *Guest {
	t.Helper()
	RequireGuest(t)
	testenv.RequireCommands(t, "mkfs.ext4")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if spec.DataSize == 0 {
		spec.DataSize = 64 << 20
	}
	dir := testenv.TempDir(t)
	name := "vk-" + filepath.Base(dir)
	img, err := guestImage(ctx, dir, spec.DataSize, spec.Files)
	if err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(dir, "console.log")
	agent := "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
	if spec.NoAgent {
		agent = ""
	}
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%s</kernel><initrd>%s</initrd><cmdline>console=ttyS0 quiet panic=-1</cmdline></os>
  <features><acpi/></features>
  <cpu mode='custom'><model>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    %s
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>`, name, filepath.Join(GuestDir(), "vmlinuz"), filepath.Join(GuestDir(), "initrd"), html.EscapeString(img), html.EscapeString(console), agent)
	dom, err := e.Conn.DomainDefineXML(xml)
	if err != nil {
		t.Fatalf("testenv: define guest: %v\n%s", err, xml)
	}
	uuid, _ := dom.GetUUIDString()
	d := &Domain{Name: name, UUID: uuid, Dom: dom, Dir: dir, env: e,
		Disks: []*Disk{{Target: "vda", Path: img, Format: "qcow2"}}}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(console); err == nil {
				t.Logf("testenv: guest console:\n%s", b)
			}
		}
		d.cleanup(t)
	})
	g := &Guest{Domain: d, Agent: guestagent.LibvirtAgent{Dom: dom}, Console: console}
	if err := dom.Create(); err != nil {
		t.Fatalf("testenv: start guest: %v", err)
	}
	if !spec.NoAgent {
		if err := g.WaitAgent(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// guestImage makes the guest's data disk: an ext4 filesystem holding files,
// as a qcow2 image in dir.
func guestImage(ctx context.Context, dir string, size int64, files map[string]string) (string, error) {
	raw := filepath.Join(dir, "data.raw")
	tree := filepath.Join(dir, "files")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return "", err
	}
	for p, c := range files {
		fp := filepath.Join(tree, p)
		_ = os.MkdirAll(filepath.Dir(fp), 0o755)
		if err := os.WriteFile(fp, []byte(c), 0o644); err != nil {
			return "", err
		}
	}
	f, err := os.Create(raw)
	if err != nil {
		return "", err
	}
	_ = f.Truncate(size)
	f.Close()
	defer os.Remove(raw)
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-d", tree, raw).CombinedOutput(); err != nil {
		return "", fmt.Errorf("testenv: mkfs.ext4: %v: %s", err, out)
	}
	img := filepath.Join(dir, "vda.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img).CombinedOutput(); err != nil {
		return "", fmt.Errorf("testenv: qemu-img convert: %v: %s", err, out)
	}
	return img, nil
}

// RequireGuest skips (fails in CI) when the test guest has not been built.
func RequireGuest(t testing.TB) {
	t.Helper()
	for _, f := range []string{"vmlinuz", "initrd"} {
		if _, err := os.Stat(filepath.Join(GuestDir(), f)); err != nil {
			testenv.Unavailable(t, "test guest not built in %s (make deps runs testenv/guest/build.sh): %v", GuestDir(), err)
		}
	}
}

// WaitAgent waits until the guest's agent answers guest-ping.
func (g *Guest) WaitAgent(ctx context.Context) error {
	start := time.Now()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := g.Agent.Command(pctx, "guest-ping", nil, nil)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("testenv: guest agent of %s did not answer in %v: %v", g.Name, time.Since(start).Round(time.Second), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Exec runs a shell command line in the guest and returns its output.
func (g *Guest) Exec(ctx context.Context, script string) (guestagent.ExecResult, error) {
	return guestagent.Exec(ctx, g.Agent, "/bin/sh", []string{"-c", script})
}

// StartWriter starts a guest process that appends numbered records
// ("record N") to path, fsyncing each, until the guest stops.
func (g *Guest) StartWriter(ctx context.Context, path string) error {
	script := fmt.Sprintf(`i=0; while true; do i=$((i+1)); echo "record $i" >> %[1]s; sync -d %[1]s; done`, path)
	return g.Agent.Command(ctx, "guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", script}}, nil)
}

// State is the domain's libvirt state.
func (g *Guest) Active() bool {
	s, _, err := g.Dom.GetState()
	return err == nil && s == libvirt.DOMAIN_RUNNING
}
