package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/notify"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// remoteTargets is the targets: part of a configuration with a local, an
// SFTP (unencrypted, like the local one) and an S3 target (encrypted: a
// copy to it is re-encrypted).
func remoteTargets(t *testing.T, dir string, sshd *testenv.SSHServer, s3 *testenv.S3Server, s3extra string) string {
	secret := filepath.Join(dir, "s3.secret")
	os.WriteFile(secret, []byte(s3.SecretKey+"\n"), 0o600)
	return fmt.Sprintf(`targets:
  - {name: local, kind: local, path: %s/repo}
  - {name: sftp, kind: sftp, host: %s, port: %d, user: %s, path: %s/repo, identity_file: %s, known_hosts_file: %s}
  - {name: s3, kind: s3, endpoint: %s, bucket: vkcopies, region: %s, access_key: %s, secret_key_file: %s, insecure: true, path_style: true,
     key_file: %s/s3.key%s}
`, dir, sshd.Host, sshd.Port, sshd.User, sshd.Dir, sshd.IdentityFile, sshd.KnownHostsFile,
		s3.Endpoint, s3.Region, s3.AccessKey, secret, dir, s3extra)
}

// webhook collects what virtkeepd posts.
type webhook struct {
	*httptest.Server
	mu   sync.Mutex
	msgs []notify.Message
}

func newWebhook(t *testing.T) *webhook {
	w := &webhook{}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var m notify.Message
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		w.mu.Lock()
		w.msgs = append(w.msgs, m)
		w.mu.Unlock()
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *webhook) find(fn func(notify.Message) bool) *notify.Message {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.msgs {
		if fn(m) {
			return &m
		}
	}
	return nil
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// awaitJob waits for the newest job of kind (and policy) created after
// since to end.
func awaitJob(t *testing.T, bin, cfg, kind, policy string, since time.Time, max time.Duration) api.Job {
	t.Helper()
	for deadline := time.Now().Add(max); time.Now().Before(deadline); time.Sleep(time.Second) {
		code, out, _ := cli(t, bin, cfg, "--json", "jobs", "--all")
		var js []api.Job
		if code != 0 || json.Unmarshal([]byte(out), &js) != nil {
			continue
		}
		for i := len(js) - 1; i >= 0; i-- {
			j := js[i]
			if j.Kind == kind && j.Policy == policy && j.Created.After(since) && j.State.Ended() {
				return j
			}
		}
	}
	t.Fatalf("no %s job of policy %q ended within %v", kind, policy, max)
	return api.Job{}
}

// TestPolicyEndToEnd: with the real virtkeepd, a policy due within a
// minute backs a domain up into a local target, copies the point to an
// SFTP and an S3 target and prunes; list shows it on all three, each
// restores byte-exact, /metrics counts it, and the webhook hears of the
// failure of a policy whose domain does not exist. A SIGHUP with a broken
// file keeps the running policies; a good one adds a policy.
func TestPolicyEndToEnd(t *testing.T) {
	sshd := testenv.SSHD(t)
	s3 := testenv.S3(t)
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Start: true, Disks: []vm.DiskSpec{{Size: 32 << 20, Fill: testenv.Fill{Random: 0.6, Hole: 0.4}}}})
	bin, dbin := binaries(t)
	dir := dom.Dir
	hook := newWebhook(t)
	metricsAddr := freeAddr(t)
	base := fmt.Sprintf("state_dir: %s/state\nlibvirt_uri: %s\nsocket: %s/d.sock\ntime_zone: UTC\nmetrics: {listen: %q}\nnotify: {webhook: {url: %q}}\n%s",
		dir, vm.URI(), dir, metricsAddr, hook.URL, remoteTargets(t, dir, sshd, s3, ""))
	// Due once, at the next minute (the one after, when this one is
	// nearly over: the daemon must be up before it).
	due := time.Now().UTC().Add(time.Minute)
	if due.Second() > 45 {
		due = due.Add(time.Minute)
	}
	cron := fmt.Sprintf("%d %d * * *", due.Minute(), due.Hour())
	policies := fmt.Sprintf(`policies:
  - name: nightly
    domains: [%s]
    schedule: %q
    targets: [local]
    copy_to: [sftp, s3]
    retention:
      - {keep_last: 1}
  - name: ghost
    domains: [vk-no-such-domain]
    schedule: %q
    targets: [local]
`, dom.Name, cron, cron)
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(base+policies), 0o600)
	if code, out, errw := cli(t, dbin, cfg, "--check-config"); code != 0 || !strings.Contains(out, "3 targets, 2 policies") {
		t.Fatalf("--check-config: %d %s %s", code, out, errw)
	}
	// An earlier point, which the policy's keep_last 1 prunes.
	code, out, errw := cli(t, bin, cfg, "backup", dom.Name, "--wait")
	if code != 0 {
		t.Fatalf("backup: %d %s", code, errw)
	}
	old := strings.TrimSpace(out)
	vda, _ := dom.Disk("vda")
	if err := dom.Write(context.Background(), "vda", 4<<20, 1<<20, 0x5a); err != nil {
		t.Fatal(err)
	}
	want := vda.Content.SHA256()

	since := time.Now()
	d := startDaemon(t, dbin, cfg)
	run := awaitJob(t, bin, cfg, api.KindPolicy, "nightly", since, 150*time.Second)
	if run.State != api.Succeeded || run.Result == nil || run.Result.Run.Domains[dom.Name] != "ok" {
		t.Fatalf("policy run: %+v", run)
	}
	ghost := awaitJob(t, bin, cfg, api.KindPolicy, "ghost", since, 30*time.Second)
	if ghost.State != api.Failed || !strings.Contains(ghost.Error, "vk-no-such-domain is not defined") {
		t.Fatalf("ghost policy run: %s %s", ghost.State, ghost.Error)
	}

	// The point on all three targets, the earlier one pruned.
	code, out, _ = cli(t, bin, cfg, "--json", "list", dom.Name)
	var ps []api.Point
	if code != 0 || json.Unmarshal([]byte(out), &ps) != nil {
		t.Fatalf("list: %d %s", code, out)
	}
	where := map[string]string{}
	for _, p := range ps {
		if p.ID == old {
			t.Errorf("point %s in %s outlived keep_last 1", old, p.Target)
		}
		where[p.Target] = p.ID
	}
	if where["local"] == "" || where["sftp"] != where["local"] || where["s3"] != where["local"] {
		t.Fatalf("points by target %v, want one point, the same on local, sftp and s3", where)
	}
	for _, tg := range []string{"local", "sftp", "s3"} {
		raw := filepath.Join(dir, tg+".raw")
		if code, _, errw := cli(t, bin, cfg, "export", where[tg], "--target", tg, "--disk", "vda", "--format", "raw", "-o", raw); code != 0 {
			t.Fatalf("export from %s: %d %s", tg, code, errw)
		}
		if got, _ := testenv.ImageSHA256(context.Background(), raw, "raw"); got != want {
			t.Errorf("vda from %s differs from the disk", tg)
		}
		os.Remove(raw)
	}

	// Metrics and the webhook.
	body := scrape(t, metricsAddr)
	for _, w := range []string{`virtkeep_jobs_total{kind="backup",result="succeeded"}`, `virtkeep_jobs_total{kind="copy",result="succeeded"} 2`,
		`virtkeep_jobs_total{kind="policy",result="failed"}`, `virtkeep_backup_read_bytes_total{target="local"}`,
		fmt.Sprintf(`virtkeep_last_backup_timestamp_seconds{domain=%q,target="s3"}`, dom.Name), `virtkeep_points{domain=`, `virtkeep_jobs{state="running"}`} {
		if !strings.Contains(body, w) {
			t.Errorf("/metrics lacks %s", w)
		}
	}
	var msg *notify.Message
	for deadline := time.Now().Add(30 * time.Second); msg == nil && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		msg = hook.find(func(m notify.Message) bool { return m.Job.Policy == "ghost" })
	}
	if msg == nil || msg.Event != "failure" || !strings.Contains(msg.Summary, "not defined") || len(msg.Log) == 0 {
		t.Fatalf("webhook: %+v", msg)
	}
	if hook.find(func(m notify.Message) bool { return m.Job.Policy == "nightly" }) != nil {
		t.Errorf("the webhook heard of a success it was not asked for")
	}

	// virtkeep run: a run now, which prunes the scheduled run's point
	// unless it is protected; prune --dry-run says why each one stays.
	if code, _, errw := cli(t, bin, cfg, "protect", where["local"], "--target", "local"); code != 0 {
		t.Fatalf("protect: %d %s", code, errw)
	}
	if code, out, errw := cli(t, bin, cfg, "run", "nightly", dom.Name, "--wait"); code != 0 || strings.TrimSpace(out) != dom.Name+": ok" {
		t.Fatalf("run nightly: %d %q %s", code, out, errw)
	}
	code, out, errw = cli(t, bin, cfg, "--json", "prune", "--dry-run")
	var decs []api.Decision
	if code != 0 || json.Unmarshal([]byte(out), &decs) != nil {
		t.Fatalf("prune --dry-run: %d %s %s", code, out, errw)
	}
	why := map[string]string{}
	for _, d := range decs {
		if !d.Keep {
			t.Errorf("dry run would remove %s from %s: keep_last 1 and the chain keep the newest, protect the other", d.Point, d.Target)
		}
		why[d.Target+" "+d.Point] = strings.Join(d.Reasons, ",")
	}
	if !strings.Contains(why["local "+where["local"]], "protected") || len(decs) != 4 {
		t.Errorf("prune --dry-run decisions: %v", why)
	}
	if code, _, errw := cli(t, bin, cfg, "unprotect", where["local"], "--target", "local"); code != 0 {
		t.Fatalf("unprotect: %d %s", code, errw)
	}

	// virtkeep policies; a broken reload keeps them, a good one applies.
	// (The CLI reads a copy: it refuses a broken file too.)
	cliCfg := filepath.Join(dir, "cli.yaml")
	os.WriteFile(cliCfg, []byte(base+policies), 0o600)
	listPolicies := func() []api.PolicyInfo {
		code, out, errw := cli(t, bin, cliCfg, "--json", "policies")
		var pis []api.PolicyInfo
		if code != 0 || json.Unmarshal([]byte(out), &pis) != nil {
			t.Fatalf("policies: %d %s %s", code, out, errw)
		}
		return pis
	}
	pis := listPolicies()
	if len(pis) != 2 || pis[0].Last == nil || pis[0].Next.IsZero() || len(pis[0].Domains) != 1 || len(pis[1].Problems) == 0 {
		t.Fatalf("policies: %+v", pis)
	}
	os.WriteFile(cfg, []byte(base+policies+"    retention: [{}]\n"), 0o600)
	_ = d.cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(d.log.String(), "configuration not reloaded"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no word of the broken reload: %s", d.log.String())
		}
	}
	if n := len(listPolicies()); n != 2 {
		t.Fatalf("%d policies after a broken reload, want the 2 running", n)
	}
	os.WriteFile(cfg, []byte(base+policies+"  - {name: weekly, domains: [vk-other-*], schedule: \"0 3 * * 0\", targets: [local]}\n"), 0o600)
	_ = d.cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(10 * time.Second); len(listPolicies()) != 3; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the good reload did not add the policy: %s", d.log.String())
		}
	}
	os.WriteFile(cfg, []byte(base), 0o600) // no more runs while the daemon stops
	_ = d.cmd.Process.Signal(syscall.SIGHUP)
	if took := d.stop(t, syscall.SIGTERM, time.Minute); d.code != 0 {
		t.Fatalf("virtkeepd exited %d after %v: %s", d.code, took, d.log.String())
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s %s", resp.Status, b)
	}
	return string(b)
}

// TestCopyResumesAfterS3Outage: a copy to S3 (bandwidth-limited, so that
// it is caught half way) loses its server for 25 s; the requests that
// failed are retried where they failed, and the copy goes on in its first
// attempt once the server is back. The destination then passes verify
// --read-data and restores byte-exact.
func TestCopyResumesAfterS3Outage(t *testing.T) {
	(&testenv.FaultRow{Fault: "S3 server killed for 25 s in the middle of a copy (through virtkeepd)", Iterations: 1,
		Checked: "the copy goes on in its first attempt, verify --read-data of the destination passes, the copy exports byte-exact"}).Record(t)
	sshd := testenv.SSHD(t)
	s3 := testenv.S3(t)
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Start: true, Disks: []vm.DiskSpec{{Size: 128 << 20, Fill: testenv.Fill{Random: 1}}}})
	bin, dbin := binaries(t)
	dir := dom.Dir
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir: %s/state\nlibvirt_uri: %s\nsocket: %s/d.sock\n%s", dir, vm.URI(), dir,
		remoteTargets(t, dir, sshd, s3, ", bandwidth: 16MiB"))), 0o600)
	d := startDaemon(t, dbin, cfg)
	code, out, errw := cli(t, bin, cfg, "backup", dom.Name, "--wait")
	if code != 0 {
		t.Fatalf("backup: %d %s", code, errw)
	}
	point := strings.TrimSpace(out)
	type result struct {
		code      int
		out, errw string
	}
	startCopy := func() chan result {
		done := make(chan result, 1)
		go func() {
			code, out, errw := cli(t, bin, cfg, "--json", "copy", point, "--to", "s3")
			done <- result{code, out, errw}
		}()
		return done
	}
	// running waits for a copy job other than not that has done a share.
	running := func(not string, share int64) string {
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			code, out, _ := cli(t, bin, cfg, "--json", "jobs")
			var js []api.Job
			if code == 0 && json.Unmarshal([]byte(out), &js) == nil {
				for _, j := range js {
					if j.Kind == api.KindCopy && j.ID != not && j.State == api.Running && j.Progress.Total > 0 && j.Progress.Done*share > j.Progress.Total {
						return j.ID
					}
				}
			}
		}
		t.Fatal("the copy never got going")
		return ""
	}
	// A copy cancelled half way: the job says so, and s3 holds no point.
	done := startCopy()
	cancelled := running("", 5)
	if code, _, errw := cli(t, bin, cfg, "job", "cancel", cancelled); code != 0 {
		t.Fatalf("job cancel: %d %s", code, errw)
	}
	if r := <-done; r.code == 0 {
		t.Fatalf("a cancelled copy exited 0: %s", r.out)
	}
	if j := jobInfo(t, bin, cfg, cancelled); j.State != api.Cancelled {
		t.Fatalf("cancelled copy: %s %s", j.State, j.Error)
	}
	if code, out, _ := cli(t, bin, cfg, "--json", "list", "--target", "s3"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("s3 after a cancelled copy: %d %s", code, out)
	}
	// Kill the server a third of the way through, bring it back later:
	// the requests that fail meanwhile are retried where they failed
	// (target/retry), so the copy goes on in its first attempt.
	done = startCopy()
	id := running(cancelled, 3)
	s3.Kill()
	time.Sleep(25 * time.Second)
	s3.Start()
	var r result
	select {
	case r = <-done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("copy did not finish: %s", d.log.String())
	}
	var reps []api.CopyReport
	if r.code != 0 || json.Unmarshal([]byte(r.out), &reps) != nil || len(reps) != 1 {
		t.Fatalf("copy: %d %s %s", r.code, r.out, r.errw)
	}
	j := jobInfo(t, bin, cfg, id)
	if j.Attempts != 1 || reps[0].ChunksNew == 0 || !strings.Contains(d.log.String(), "request failed: retrying") {
		t.Errorf("copy through a 25 s outage took %d attempts and stored %d of %d chunks: want one attempt whose failed requests were retried", j.Attempts, reps[0].ChunksNew, reps[0].Chunks)
	}
	t.Logf("copy: %d attempts, stored %d of %d chunks", j.Attempts, reps[0].ChunksNew, reps[0].Chunks)
	if code, out, errw := cli(t, bin, cfg, "verify", "--all", "--target", "s3", "--read-data"); code != 0 || !strings.Contains(out, "no problems") {
		t.Fatalf("verify s3: %d %s %s", code, out, errw)
	}
	raw := filepath.Join(dir, "s3.raw")
	if code, _, errw := cli(t, bin, cfg, "export", point, "--target", "s3", "--disk", "vda", "--format", "raw", "-o", raw); code != 0 {
		t.Fatalf("export from s3: %d %s", code, errw)
	}
	vda, _ := dom.Disk("vda")
	if got, _ := testenv.ImageSHA256(context.Background(), raw, "raw"); got != vda.Content.SHA256() {
		t.Errorf("vda from s3 differs from the disk")
	}
}
