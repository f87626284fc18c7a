package vm

import (
	"bytes"
	"context"
	"fmt"
	"github.com/virtkeep/virtkeep/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/qmp"
)

// QEMUSpec describes a plain QEMU process (no libvirt).
type QEMUSpec struct {
	Disks     []DiskSpec
	MemoryMiB uint // default 64
	// Running lets the vCPUs run; by default QEMU starts with -S (paused).
	Running bool
	// Guest boots the test guest (kernel and initramfs from GuestDir) with
	// its agent on a unix socket (QEMU.AgentPath), under TCG. Disks[0] must
	// then be an ext4 image made by GuestImage.
	Guest bool
}

// QEMU is a qemu-system-x86_64 process started by a test, with two QMP
// sockets: one testenv uses itself, and QMPPath, free for the code under test.
// Each disk's format node is named after its target (vda), its file node
// <target>-file, and its virtio-blk device <target>.
type QEMU struct {
	QMPPath string
	// AgentPath is the host side of the guest agent's virtio-serial port
	// (Guest only).
	AgentPath string
	Disks     []*Disk
	Dir       string

	cmd     *exec.Cmd
	stderr  *bytes.Buffer
	mon     *qmp.SocketMonitor
	client  *qmp.Client
	exited  chan struct{}
	waitErr error
}

// StartQEMU starts a QEMU process for t; it is killed when t ends.
func StartQEMU(t testing.TB, spec QEMUSpec) *QEMU {
	t.Helper()
	testenv.Integration(t)
	testenv.RequireCommands(t, "qemu-system-x86_64", "qemu-img", "qemu-io", "qemu-nbd", "nbdcopy")
	if len(spec.Disks) == 0 && !spec.Guest {
		t.Fatalf("testenv: QEMU needs at least one disk")
	}
	ctx := context.Background()
	dir := testenv.TempDir(t)
	var disks []*Disk
	var err error
	if spec.Guest {
		RequireGuest(t)
		img, err := guestImage(ctx, dir, 64<<20, nil)
		if err != nil {
			t.Fatal(err)
		}
		disks = []*Disk{{Target: "vda", Path: img, Format: "qcow2"}}
	} else if disks, err = createDisks(ctx, dir, spec.Disks); err != nil {
		t.Fatal(err)
	}
	mem := spec.MemoryMiB
	if mem == 0 {
		mem = 64
	}
	own := filepath.Join(dir, "testenv.qmp")
	q := &QEMU{QMPPath: filepath.Join(dir, "qmp.sock"), Disks: disks, Dir: dir, stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35,accel=kvm:tcg", "-m", fmt.Sprint(mem),
		"-qmp", "unix:" + own + ",server=on,wait=off",
		"-qmp", "unix:" + q.QMPPath + ",server=on,wait=off",
	}
	if !spec.Running && !spec.Guest {
		args = append(args, "-S")
	}
	if spec.Guest {
		q.AgentPath = filepath.Join(dir, "agent.sock")
		args[5] = "q35,accel=tcg"
		if mem < 256 {
			args[7] = "256"
		}
		args = append(args, "-cpu", "qemu64", "-kernel", filepath.Join(GuestDir(), "vmlinuz"), "-initrd", filepath.Join(GuestDir(), "initrd"),
			"-append", "console=ttyS0 quiet panic=-1", "-serial", "file:"+filepath.Join(dir, "console.log"),
			"-device", "virtio-serial-pci,id=vser0",
			"-chardev", "socket,id=ga0,path="+q.AgentPath+",server=on,wait=off",
			"-device", "virtserialport,chardev=ga0,name=org.qemu.guest_agent.0")
	}
	for _, d := range disks {
		args = append(args,
			"-blockdev", fmt.Sprintf("driver=file,node-name=%s-file,filename=%s", d.Target, d.Path),
			"-blockdev", fmt.Sprintf("driver=%s,node-name=%s,file=%s-file", d.Format, d.Target, d.Target),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=%s,id=%s", d.Target, d.Target))
		d.qdev = d.Target
	}
	q.cmd = exec.Command("qemu-system-x86_64", args...)
	q.cmd.Stderr = q.stderr
	q.cmd.Stdout = q.stderr
	if err := q.cmd.Start(); err != nil {
		t.Fatalf("testenv: start qemu: %v", err)
	}
	go func() { q.waitErr = q.cmd.Wait(); close(q.exited) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("testenv: qemu args: %s\nqemu output:\n%s", strings.Join(args, " "), q.stderr.String())
		}
		if q.mon != nil {
			_ = q.mon.Disconnect()
		}
		q.Kill()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		q.mon = qmp.NewSocketMonitor("unix", own, 5*time.Second)
		if err = q.mon.Connect(); err == nil {
			break
		}
		select {
		case <-q.exited:
			t.Fatalf("testenv: qemu exited: %v\n%s", q.waitErr, q.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: qemu QMP socket %s: %v", own, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	q.client = qmp.NewClient(q.mon)
	return q
}

// Kill kills the process at once (as a crash would) and waits for it.
func (q *QEMU) Kill() {
	if q.cmd.Process != nil {
		_ = q.cmd.Process.Kill()
	}
	<-q.exited
	_ = os.Remove(q.QMPPath)
}

// Disk returns the disk with the given target name.
func (q *QEMU) Disk(target string) (*Disk, error) { return findDisk(q.Disks, target) }

// HMP runs an HMP command line in the process.
func (q *QEMU) HMP(ctx context.Context, line string) (string, error) {
	return q.client.HumanMonitorCommand(ctx, line)
}

// Write writes n bytes of pattern at off into disk target and records it.
func (q *QEMU) Write(ctx context.Context, target string, off, n int64, pattern byte) error {
	disk, err := q.Disk(target)
	if err != nil {
		return err
	}
	return writeDisk(ctx, q.HMP, disk, testenv.Write{Off: off, Len: n, Pattern: pattern})
}
