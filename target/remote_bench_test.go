package target_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

type diskRead struct{ d *target.DiskReader }

func (r diskRead) Read(ctx context.Context, p []byte, off int64) error {
	return r.d.ReadAt(ctx, p, off)
}

// BenchmarkBackends writes one 512 MiB point (half random, half text,
// zstd) to a local directory, to OpenSSH's sshd over SFTP and to the S3
// server, all on this host, then reads it back as a restore does (4 MiB
// pieces, 4 in flight, 8 chunk gets each). It reports each backend's
// throughput and its ratio to the local one, measured side by side.
func BenchmarkBackends(b *testing.B) {
	sshd := testenv.SSHD(b)
	s3srv := testenv.S3(b)
	ctx := context.Background()
	const size = 512 << 20
	content, err := testenv.NewContent(size, 42, testenv.Fill{Random: 1, Text: 1})
	if err != nil {
		b.Fatal(err)
	}
	dir := testenv.TempDir(b)
	backends := []struct {
		name string
		open func() target.Backend
	}{
		{"local", func() target.Backend {
			l, err := local.Open(local.Config{Path: filepath.Join(dir, "local")})
			if err != nil {
				b.Fatal(err)
			}
			return l
		}},
		{"sftp", func() target.Backend { return sftpBackend(b, sshd, 2) }},
		{"s3", func() target.Backend { return s3Backend(b, s3srv, "bench") }},
	}
	var localW, localR float64
	for _, be := range backends {
		bk := be.open()
		if err := target.Init(ctx, bk, target.InitOptions{Compression: target.CompressionZstd}); err != nil {
			b.Fatal(err)
		}
		r, err := target.Open(ctx, bk, target.OpenOptions{})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "bench", Level: target.LevelFull})
		if err != nil {
			b.Fatal(err)
		}
		dw, _ := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: size})
		buf := make([]byte, dw.ChunkSize())
		for idx := int64(0); idx < dw.Chunks(); idx++ {
			content.ReadAt(buf, idx*int64(len(buf)))
			if err := dw.WriteChunk(ctx, idx, buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := dw.Close(ctx); err != nil {
			b.Fatal(err)
		}
		m, err := pw.Commit(ctx)
		if err != nil {
			b.Fatal(err)
		}
		wrote := time.Since(start)
		d, err := r.OpenDisk(ctx, m.ID, "vda")
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		var got int64
		err = nbd.Fetch(ctx, diskRead{d}, []nbd.Extent{{Off: 0, Len: size}}, nbd.FetchOptions{PieceSize: 4 << 20, InFlight: 4}, func(off int64, p []byte) error {
			got += int64(len(p))
			return nil
		})
		if err != nil || got != size {
			b.Fatalf("read back %d bytes: %v", got, err)
		}
		read := time.Since(start)
		w, rd := float64(size)/wrote.Seconds()/1e6, float64(size)/read.Seconds()/1e6
		if be.name == "local" {
			localW, localR = w, rd
		}
		msg := fmt.Sprintf("%s: write %.0f MB/s (%.2fx local), restore read %.0f MB/s (%.2fx local)", be.name, w, w/localW, rd, rd/localR)
		testenv.Report(b, "%s", msg)
		bk.Close()
	}
}
