package backup_test

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/hostd/restore"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/all"
	"github.com/virtkeep/virtkeep/target/s3"
	"github.com/virtkeep/virtkeep/target/secret"
	"github.com/virtkeep/virtkeep/target/sftp"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// TestRemoteTargets: a chain (full + 2 incrementals) backed up to an SFTP
// target (encrypted, OpenSSH's sshd) and to an S3 target (compressed, a
// real S3 server) restores from each, streamed with no staging copy, to
// raw and qcow2 files equal to the disk at backup time and sparse; the
// remote repositories check clean.
func TestRemoteTargets(t *testing.T) {
	sshd := testenv.SSHD(t)
	s3srv := testenv.S3(t)
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 40 << 20, Fill: testenv.Fill{Random: 1, Text: 2, Hole: 5}}}, Start: true})
	cfgs := []all.Config{
		{Name: "sftp", Kind: "sftp", Compression: target.CompressionZstd, KeyFile: filepath.Join(f.Dom.Dir, "sftp.key"),
			SFTP: sftp.Config{Host: sshd.Host, Port: sshd.Port, User: sshd.User, Path: filepath.Join(sshd.Dir, "repo"),
				IdentityFile: sshd.IdentityFile, KnownHostsFile: sshd.KnownHostsFile, Timeout: 10 * time.Second}},
		{Name: "s3", Kind: "s3", Compression: target.CompressionZstd,
			S3: s3.Config{Endpoint: s3srv.Endpoint, Bucket: "virtkeep", Prefix: "host1", Region: s3srv.Region,
				AccessKey: s3srv.AccessKey, SecretKey: secret.Value(s3srv.SecretKey), Insecure: true, PathStyle: true}},
	}
	vda, _ := f.Dom.Disk("vda")
	rng := rand.New(rand.NewPCG(3, 9))
	for _, cfg := range cfgs {
		t.Run(cfg.Name, func(t *testing.T) {
			repo, err := all.Open(f.Ctx, cfg, true, f.Log)
			if err != nil {
				t.Fatal(err)
			}
			defer repo.Close()
			tg := backup.Target{Name: cfg.Name, Repo: repo}
			var points []*target.Manifest
			var states []*testenv.Content
			for i := 0; i < 3; i++ {
				if i > 0 {
					for j := 0; j < 6; j++ {
						f.Write("vda", rng.Int64N(39<<20)&^511, (1+rng.Int64N(256))*512, byte(rng.IntN(250)+1))
					}
				}
				states = append(states, vda.Content.Snapshot())
				points = append(points, f.Backup(tg, chain.LevelAuto).Manifest)
			}
			if points[1].Level != chain.LevelInc {
				t.Errorf("second point is %s, want inc", points[1].Level)
			}
			dir := t.TempDir()
			for i, m := range points {
				for _, format := range []string{"raw", "qcow2"} {
					dst := filepath.Join(dir, fmt.Sprintf("%d.%s", i, format))
					start := time.Now()
					if err := restore.Disk(f.Ctx, repo, m.ID, "vda", dst, restore.Options{Format: format, Verify: true}); err != nil {
						t.Fatalf("point %d %s: %v", i, format, err)
					}
					took := time.Since(start)
					got, err := testenv.ImageSHA256(f.Ctx, dst, format)
					if err != nil {
						t.Fatal(err)
					}
					if got != states[i].SHA256() {
						t.Fatalf("point %d restored from %s to %s differs from the disk at backup time", i, cfg.Name, format)
					}
					if a := fixture.Allocated(t, dst); a > 2*states[i].Allocated()+4<<20 {
						t.Errorf("point %d %s allocates %d bytes for %d of data", i, format, a, states[i].Allocated())
					}
					if i == 0 && format == "raw" {
						testenv.Report(t, "restore of %d MiB of data from %s: %v", states[i].Allocated()>>20, repo.Backend().Properties().Name, took.Round(time.Millisecond))
					}
				}
			}
			rep, err := repo.Check(f.Ctx, target.CheckOptions{ReadData: true})
			if err != nil || !rep.OK() {
				t.Fatalf("check of the %s repository: %+v, %v", cfg.Name, rep, err)
			}
		})
	}
}
