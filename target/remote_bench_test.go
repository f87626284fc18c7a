package target_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

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
		w, rd, _ := writeRead(b, r, content)
		if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
			b.Fatalf("%s: check --read-data: %v %v", be.name, rep, err)
		}
		if be.name == "local" {
			localW, localR = w, rd
		}
		msg := fmt.Sprintf("%s: write %.0f MB/s (%.2fx local), restore read %.0f MB/s (%.2fx local)", be.name, w, w/localW, rd, rd/localR)
		testenv.Report(b, "%s", msg)
		bk.Close()
	}
}
