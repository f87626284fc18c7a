package target_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/sftp"
	"github.com/virtkeep/virtkeep/testenv"
)

// counted counts a backend's puts and gets.
type counted struct {
	target.Backend
	puts, gets atomic.Int64
}

func (c *counted) Put(ctx context.Context, key string, data []byte) error {
	c.puts.Add(1)
	return c.Backend.Put(ctx, key, data)
}

func (c *counted) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	c.gets.Add(1)
	return c.Backend.Get(ctx, key, off, n)
}

// BenchmarkLatency writes one 256 MiB point (half random, half text,
// zstd) to the S3 server and to sshd through testenv's delaying proxy at
// 0 ms and at 20 ms each way, in packs (format 2) and with an object per
// chunk (format 1), then reads it back as a restore does, compares what it
// read, and checks the repository with --read-data. It reports throughput
// (check's by the disk's size; its requests are not counted), the 20 ms/0
// ms ratio (goal >= 0.7) and requests and objects per GiB stored.
func BenchmarkLatency(b *testing.B) {
	sshd := testenv.SSHD(b)
	s3srv := testenv.S3(b)
	ctx := context.Background()
	const size = 256 << 20
	content, err := testenv.NewContent(size, 42, testenv.Fill{Random: 1, Text: 1})
	if err != nil {
		b.Fatal(err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-22s %6s %10s %10s %10s %9s %9s %9s\n", "backend", "delay", "write MB/s", "read MB/s", "check MB/s", "PUT/GiB", "GET/GiB", "obj/GiB")
	n := 0
	for _, be := range []string{"s3", "sftp"} {
		for _, packs := range []int{0, -1} {
			var base [3]float64
			for _, delay := range []time.Duration{0, 20 * time.Millisecond} {
				n++
				var bk target.Backend
				switch be {
				case "s3":
					p := testenv.NewDelayProxy(b, s3srv.Endpoint, delay)
					srv := *s3srv
					srv.Endpoint = p.Addr
					bk = s3Backend(b, &srv, fmt.Sprintf("lat-%d", n))
				case "sftp":
					p := testenv.NewDelayProxy(b, net.JoinHostPort(sshd.Host, strconv.Itoa(sshd.Port)), delay)
					srv := proxiedSSH(b, sshd, p.Addr)
					bk = sftpBackend(b, srv, sftp.DefaultConnections)
				}
				cb := &counted{Backend: bk}
				if err := target.Init(ctx, cb, target.InitOptions{Compression: target.CompressionZstd, PackSize: packs}); err != nil {
					b.Fatal(err)
				}
				r, err := target.Open(ctx, cb, target.OpenOptions{Workers: 16})
				if err != nil {
					b.Fatal(err)
				}
				w, rd, m := writeRead(b, r, content)
				var objs int
				_ = bk.List(ctx, "", func(target.ObjectInfo) error { objs++; return nil })
				puts, gets := cb.puts.Load(), cb.gets.Load()
				checkStart := time.Now()
				if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
					b.Fatalf("%s: check --read-data: %v %v", be, rep, err)
				}
				ck := float64(size) / time.Since(checkStart).Seconds() / 1e6
				gib := float64(m.Disks[0].BytesStored) / (1 << 30)
				label := be + map[int]string{0: " packs", -1: " chunk objects"}[packs]
				fmt.Fprintf(&sb, "%-22s %4dms %10.0f %10.0f %10.0f %9.0f %9.0f %9.0f", label, delay.Milliseconds(), w, rd, ck,
					float64(puts)/gib, float64(gets)/gib, float64(objs)/gib)
				if delay == 0 {
					base = [3]float64{w, rd, ck}
					sb.WriteString("\n")
				} else {
					fmt.Fprintf(&sb, "   at 20 ms: write %.2fx, read %.2fx, check %.2fx of 0 ms (goal >= 0.7)\n", w/base[0], rd/base[1], ck/base[2])
				}
				bk.Close()
			}
		}
	}
	b.Log(sb.String())
}

// writeRead writes c as a point and reads it back, comparing every byte
// with c (by SHA-256); it returns both throughputs in MB/s.
func writeRead(b *testing.B, r *target.Repository, c *testenv.Content) (w, rd float64, m *target.Manifest) {
	ctx := context.Background()
	size := c.Size()
	start := time.Now()
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "bench", Level: target.LevelFull})
	if err != nil {
		b.Fatal(err)
	}
	dw, _ := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: size})
	buf := make([]byte, dw.ChunkSize())
	for idx := int64(0); idx < dw.Chunks(); idx++ {
		c.ReadAt(buf, idx*int64(len(buf)))
		if err := dw.WriteChunk(ctx, idx, buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := dw.Close(ctx); err != nil {
		b.Fatal(err)
	}
	if m, err = pw.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	wrote := time.Since(start)
	d, err := r.OpenDisk(ctx, m.ID, "vda")
	if err != nil {
		b.Fatal(err)
	}
	want := c.SHA256()
	start = time.Now()
	var got int64
	h := sha256.New()
	err = nbd.Fetch(ctx, diskRead{d}, []nbd.Extent{{Off: 0, Len: size}}, nbd.FetchOptions{PieceSize: 4 << 20, InFlight: 4}, func(off int64, p []byte) error {
		got += int64(len(p))
		h.Write(p)
		return nil
	})
	if err != nil || got != size {
		b.Fatalf("read back %d bytes: %v", got, err)
	}
	if hex.EncodeToString(h.Sum(nil)) != want {
		b.Fatal("read back other bytes than were written")
	}
	rd = float64(size) / time.Since(start).Seconds() / 1e6
	return float64(size) / wrote.Seconds() / 1e6, rd, m
}

// proxiedSSH is srv reached at addr: its known_hosts names the host key
// for addr's port.
func proxiedSSH(b *testing.B, srv *testenv.SSHServer, addr string) *testenv.SSHServer {
	kh, err := os.ReadFile(srv.KnownHostsFile)
	if err != nil {
		b.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	fields := strings.Fields(string(kh))
	line := fmt.Sprintf("[%s]:%s %s\n", host, port, strings.Join(fields[1:], " "))
	out := *srv
	out.Port, _ = strconv.Atoi(port)
	out.KnownHostsFile = filepath.Join(b.TempDir(), "known_hosts")
	if err := os.WriteFile(out.KnownHostsFile, []byte(line), 0o600); err != nil {
		b.Fatal(err)
	}
	return &out
}
