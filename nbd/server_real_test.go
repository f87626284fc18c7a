package nbd_test

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/testenv"
)

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

// TestServerWithRealClients serves a disk model and reads it back with
// nbdinfo, nbdcopy and qemu-img, over a unix socket and over TCP.
func TestServerWithRealClients(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "nbdinfo", "nbdcopy", "qemu-img")
	content, err := testenv.NewContent(64<<20, 5, testenv.Fill{})
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "disk", Description: "virtkeep test", Source: contentSource{content}}}}
	sock := startServer(t, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	unixURI := "nbd+unix:///disk?socket=" + sock
	tcpURI := fmt.Sprintf("nbd://%s/disk", ln.Addr())
	dir := testenv.TempDir(t)
	want := content.SHA256()

	for _, uri := range []string{unixURI, tcpURI} {
		// nbdinfo --map sees the holes the source reports.
		var m []struct {
			Offset, Length int64
			Type           uint32
		}
		if err := json.Unmarshal(run(t, "nbdinfo", "--map", "--json", uri), &m); err != nil {
			t.Fatal(err)
		}
		var got []nbd.Extent
		for _, e := range m {
			got = appendMerged(got, nbd.Extent{Off: e.Offset, Len: e.Length, Flags: e.Type})
		}
		if w := wantAllocation(content); !equalExtents(got, w) {
			t.Fatalf("%s: nbdinfo --map\n got %v\nwant %v", uri, got, w)
		}
		// nbdinfo reads the size and the description.
		var info struct {
			Exports []struct {
				Size        int64  `json:"export-size"`
				Description string `json:"description"`
			} `json:"exports"`
		}
		if err := json.Unmarshal(run(t, "nbdinfo", "--json", uri), &info); err != nil {
			t.Fatal(err)
		}
		if len(info.Exports) != 1 || info.Exports[0].Size != content.Size() || info.Exports[0].Description != "virtkeep test" {
			t.Fatalf("nbdinfo: %+v", info)
		}
	}
	// nbdcopy uses several connections at once (the export allows multi-conn).
	out := filepath.Join(dir, "copy.raw")
	run(t, "nbdcopy", "--connections=4", "--requests=16", unixURI, out)
	if got := fileSHA(t, out); got != want {
		t.Fatalf("nbdcopy: %s, want %s", got, want)
	}
	// qemu-img convert and compare.
	conv := filepath.Join(dir, "conv.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", tcpURI, conv)
	if got := fileSHA(t, conv); got != want {
		t.Fatalf("qemu-img convert: %s, want %s", got, want)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", unixURI, conv)
	// A differing file is reported as differing.
	if err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 1 4096 1", conv).Run(); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", unixURI, conv).Run(); err == nil {
		t.Fatal("qemu-img compare found no difference")
	}
	// Sparse: nbdcopy leaves the holes unallocated in the copy.
	if alloc := allocatedBytes(t, out); alloc > content.Allocated()+1<<20 {
		t.Errorf("copy allocates %d bytes; the model allocates %d", alloc, content.Allocated())
	}
}
