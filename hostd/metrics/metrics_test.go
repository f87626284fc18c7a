package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/catalog"
	"github.com/virtkeep/virtkeep/testenv"
)

type fakeSource struct{}

func (fakeSource) Running() []api.Job {
	return []api.Job{{State: api.Queued}, {State: api.Running}, {State: api.Queued}}
}
func (fakeSource) LibvirtUp() bool { return true }

func (fakeSource) PointStats(context.Context) ([]catalog.PointStat, error) {
	return []catalog.PointStat{{Target: "local", Domain: "web1", Points: 7, Damaged: 1, Last: time.Unix(1764547200, 0)}}, nil
}

// TestMetrics: what jobs and the catalog say is exported under
// Prometheus' names, and a listener with a token refuses scrapes without it.
func TestMetrics(t *testing.T) {
	m := New()
	m.Watch(fakeSource{})
	t0 := time.Now()
	m.Observe(api.Job{Kind: api.KindBackup, Target: "local", State: api.Succeeded, Started: t0, Ended: t0.Add(3 * time.Second),
		Result: &api.JobResult{Point: &api.Point{FreezeMS: 40, Disks: []api.PointDisk{{BytesRead: 1000, BytesStored: 300}}}}})
	m.Observe(api.Job{Kind: api.KindCopy, Target: "offsite", State: api.Succeeded, Result: &api.JobResult{Copies: []api.CopyReport{{To: "offsite", BytesStored: 55}}}})
	m.Observe(api.Job{Kind: api.KindGC, State: api.Succeeded, Result: &api.JobResult{GC: map[string]api.GCReport{"local": {BytesKept: 4096}}}})
	m.Observe(api.Job{Kind: api.KindVerify, Target: "local", State: api.Failed, ErrorCode: api.CodeFailed})

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Serve(ctx, ListenConfig{Addr: addr, Token: "t0ken"})
	get := func(token string) (int, string) {
		for i := 0; i < 100; i++ {
			req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
		t.Fatal("the listener never answered")
		return 0, ""
	}
	if err := m.Serve(ctx, ListenConfig{Addr: "0.0.0.0:0", Token: "t"}); !errors.Is(err, ErrExposed) {
		t.Fatalf("a listener on every address without TLS: %v", err)
	}
	if code, _ := get("wrong"); code != http.StatusUnauthorized {
		t.Fatalf("a scrape with the wrong token: %d", code)
	}
	code, body := get("t0ken")
	for _, want := range []string{
		`virtkeep_jobs_total{kind="backup",result="succeeded"} 1`,
		`virtkeep_job_duration_seconds_sum{kind="backup"} 3`,
		`virtkeep_backup_read_bytes_total{target="local"} 1000`,
		`virtkeep_backup_stored_bytes_total{target="local"} 300`,
		`virtkeep_backup_deduplicated_bytes_total{target="local"} 700`,
		`virtkeep_copy_stored_bytes_total{target="offsite"} 55`,
		`virtkeep_freeze_duration_seconds_count 1`,
		`virtkeep_repository_size_bytes{target="local"} 4096`,
		`virtkeep_verify_failures_total{target="local"} 1`,
		`virtkeep_jobs{state="queued"} 2`,
		`virtkeep_libvirt_up 1`,
		`virtkeep_points{domain="web1",target="local"} 7`,
		`virtkeep_points_damaged{domain="web1",target="local"} 1`,
		`virtkeep_last_backup_timestamp_seconds{domain="web1",target="local"} 1.7645472e+09`,
		`process_resident_memory_bytes`,
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %s", code, want)
		}
	}
}

// TestMetricsLoopbackLocalUsers: a loopback listener without a token
// answers root and members of the virtkeep group, not every local user
// (/metrics names domains and targets).
func TestMetricsLoopbackLocalUsers(t *testing.T) {
	testenv.RequireCommands(t, "setpriv", "busybox")
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "needs root to scrape as another user")
	}
	m := New()
	m.Watch(fakeSource{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Serve(ctx, ListenConfig{Addr: addr, GID: 4242})
	url := "http://" + addr + "/metrics"
	var code int
	for i := 0; i < 100; i++ {
		resp, err := http.Get(url)
		if err == nil {
			code = resp.StatusCode
			resp.Body.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code != http.StatusOK {
		t.Fatalf("root's scrape: %d", code)
	}
	scrapeAs := func(uid, gid string, groups string) string {
		args := []string{"--reuid=" + uid, "--regid=" + gid}
		if groups == "" {
			args = append(args, "--clear-groups")
		} else {
			args = append(args, "--groups="+groups)
		}
		out, _ := exec.Command("setpriv", append(args, "busybox", "wget", "-q", "-O", "-", url)...).CombinedOutput()
		return string(out)
	}
	if out := scrapeAs("65534", "65534", ""); strings.Contains(out, "virtkeep_jobs") || !strings.Contains(out, "403") {
		t.Fatalf("another local user scraped /metrics: %s", out)
	}
}
