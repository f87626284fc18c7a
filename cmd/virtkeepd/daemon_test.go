package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/hostd/mount"
	"github.com/virtkeep/virtkeep/hostd/statedir"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
)

// writePoint stores image as disk vda of a new point and returns its ID.
func writePoint(t *testing.T, repoDir, image string) string {
	ctx := context.Background()
	r := fixture.Repo(t, repoDir)
	data, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm", DomainUUID: "4b0c1b2e-9a55-4d0b-8f43-8d3f4a1f0a01", Level: target.LevelFull, Consistency: "crash"})
	if err != nil {
		t.Fatal(err)
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", Format: "raw", VirtualSize: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	cs := int64(dw.ChunkSize())
	for i := int64(0); i < dw.Chunks(); i++ {
		if err := dw.WriteChunk(ctx, i, data[i*cs:min((i+1)*cs, int64(len(data)))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := dw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := pw.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m.ID
}

// TestDaemonStartCleansMounts: a file-level mount (with an LVM volume) is
// left behind as by a crashed run; virtkeepd, started as systemd would
// (NOTIFY_SOCKET), undoes it before it reports READY=1 — no mount, loop
// device, FUSE mount or process is left — and reports STOPPING=1 and
// exits 0 on SIGTERM.
func TestDaemonStartCleansMounts(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "nbdfuse", "losetup", "fusermount3", "mkfs.ext4")
	dir := testenv.TempDir(t)
	img := testenv.WriteLVMImage(t, filepath.Join(dir, "disk.raw"))
	point := writePoint(t, filepath.Join(dir, "repo"), img.Path)
	state := filepath.Join(dir, "state")
	e := &mount.Mounter{State: statedir.Dir(state)}
	exe, _ := os.Executable()
	mnt := filepath.Join(dir, "mnt")
	t.Setenv("VIRTKEEP_SERVE", filepath.Join(dir, "repo")+","+point+",*")
	st, err := e.Mount(context.Background(), mount.Request{Point: point, Disk: "vda", Dir: mnt, Serve: []string{exe, "-test.run=^$"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Umount(context.Background(), mnt) })
	if len(st.Mounts) != 3 {
		t.Fatalf("mounted %+v", st.Mounts)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "vkvg-data", "hello.txt")); err != nil || string(got) != img.Files["vkvg/data"]["hello.txt"] {
		t.Fatalf("file in the LV: %q %v", got, err)
	}

	sock := filepath.Join(dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir: %s\nlibvirt_uri: test:///default\nsocket: %s/d.sock\ntargets: [{name: t, kind: local, path: %s/repo}]\n", state, dir, dir)), 0o600)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var out, errw bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"--config", cfg}, &out, &errw) }()
	await := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			ln.SetReadDeadline(time.Now().Add(60 * time.Second))
			n, err := ln.Read(buf)
			if err != nil {
				t.Fatalf("waiting for %s: %v; daemon said: %s", want, err, errw.String())
			}
			if strings.Contains(string(buf[:n]), want) {
				return
			}
		}
	}
	await("READY=1")
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), mnt) || strings.Contains(string(mi), st.Work) {
		t.Fatalf("mounts left after the daemon started:\n%s", mi)
	}
	if out, _ := exec.Command("losetup", "-a").Output(); strings.Contains(string(out), st.Work) {
		t.Fatalf("loop devices left: %s", out)
	}
	if out, _ := exec.Command("pgrep", "-f", st.Work).Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("processes left: %s", out)
	}
	if _, err := os.Stat(st.Work); !os.IsNotExist(err) {
		t.Fatalf("work directory left: %v", err)
	}
	stop() // SIGTERM: main turns it into ctx cancellation
	await("STOPPING=1")
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("daemon exited %d: %s", code, errw.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not stop")
	}
}
