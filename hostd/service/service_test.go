package service_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/apiserver"
	"github.com/virtkeep/virtkeep/hostd/client"
	"github.com/virtkeep/virtkeep/hostd/service"
	"github.com/virtkeep/virtkeep/target/all"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// newService is a service over a fresh state_dir with one local target.
func newService(t *testing.T, dir, mode string) *service.Service {
	t.Helper()
	state := filepath.Join(dir, "state-"+mode)
	s, err := service.New(context.Background(), service.Config{Mode: mode, Version: "test", StateDir: state, LibvirtURI: vm.URI(),
		Targets:      []service.Target{{Name: "local", Open: all.Config{Name: "local", Kind: "local", Path: filepath.Join(dir, "repo-"+mode)}}},
		RetryBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		s.Close()
	})
	return s
}

// overSocket serves s on a unix socket and returns a client of it.
func overSocket(t *testing.T, dir string, s api.Service) api.Service {
	t.Helper()
	sock := filepath.Join(dir, "api.sock")
	ln, err := apiserver.Listen(sock, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := &apiserver.Server{Service: s, GID: -1}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	c, err := client.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitJob follows a job to its end.
func waitJob(t *testing.T, s api.Service, j api.Job) api.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var last api.Job
	if err := s.Watch(ctx, j.ID, func(x api.Job) error { last = x; return nil }); err != nil {
		t.Fatalf("watch %s: %v", j.ID, err)
	}
	if !last.State.Ended() {
		t.Fatalf("watch of %s ended with the job %s", j.ID, last.State)
	}
	return last
}

func wantCode(t *testing.T, what string, err error, code api.Code) {
	t.Helper()
	if api.CodeOf(err) != code {
		t.Errorf("%s: %v (code %q), want code %q", what, err, api.CodeOf(err), code)
	}
}

// TestServiceTable runs the same table against the service in process and
// against the client over a real unix socket.
func TestServiceTable(t *testing.T) {
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	for _, mode := range []string{"local", "daemon"} {
		t.Run(mode, func(t *testing.T) {
			dir := testenv.TempDir(t)
			var s api.Service = newService(t, dir, mode)
			if mode == "daemon" {
				s = overSocket(t, dir, s)
			}
			serviceTable(t, s, dom, dir, mode)
		})
	}
}

func serviceTable(t *testing.T, s api.Service, dom *vm.Domain, dir, mode string) {
	ctx := context.Background()
	if v, err := s.Version(ctx); err != nil || v.Mode != mode || v.API != api.Version {
		t.Fatalf("version: %+v %v", v, err)
	}
	// Bad input: refused with the right code, nothing queued.
	bad := []struct {
		what string
		err  error
		code api.Code
	}{}
	add := func(what string, code api.Code, err error) {
		bad = append(bad, struct {
			what string
			err  error
			code api.Code
		}{what, err, code})
	}
	_, err := s.Backup(ctx, api.BackupRequest{Domain: "vk-no-such-domain"})
	add("backup of an unknown domain", api.CodeNotFound, err)
	_, err = s.Backup(ctx, api.BackupRequest{Domain: "../../etc"})
	add("backup of a domain named ../../etc", api.CodeBadRequest, err)
	_, err = s.Backup(ctx, api.BackupRequest{Domain: dom.Name, Level: "weekly"})
	add("backup level weekly", api.CodeBadRequest, err)
	_, err = s.Backup(ctx, api.BackupRequest{Domain: dom.Name, Target: "nowhere"})
	add("backup to an unknown target", api.CodeNotFound, err)
	_, err = s.Point(ctx, api.PointRequest{Point: "yesterday"})
	add("point yesterday", api.CodeBadRequest, err)
	_, err = s.Point(ctx, api.PointRequest{Point: "vk-none@latest"})
	add("point of a domain without points", api.CodeNotFound, err)
	_, err = s.Job(ctx, "..")
	add("job ..", api.CodeBadRequest, err)
	_, err = s.Job(ctx, "20260101T000000Z-00000000")
	add("unknown job", api.CodeNotFound, err)
	_, err = s.Restore(ctx, api.RestoreRequest{Point: dom.Name + "@latest", To: "relative/dir"})
	add("restore to a relative directory", api.CodeBadRequest, err)
	err = s.EndSession(ctx, api.EndSessionRequest{ID: "../x"})
	add("end session ../x", api.CodeBadRequest, err)
	_, err = s.Serve(ctx, api.ServeRequest{Point: dom.Name + "@latest", Listen: "0.0.0.0:10809"})
	add("serve on 0.0.0.0", api.CodeBadRequest, err)
	for _, b := range bad {
		wantCode(t, b.what, b.err, b.code)
	}
	if js, err := s.Jobs(ctx, api.JobsRequest{All: true}); err != nil || len(js) != 0 {
		t.Fatalf("jobs after refused requests: %v %v", js, err)
	}

	// A backup, and a second one of the same domain while it runs.
	j, err := s.Backup(ctx, api.BackupRequest{Domain: dom.Name, Level: "full"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Backup(ctx, api.BackupRequest{Domain: dom.Name})
	wantCode(t, "second backup of a domain being backed up", err, api.CodeBusy)
	j = waitJob(t, s, j)
	if j.State != api.Succeeded || j.Result == nil || j.Result.Point == nil || j.Progress.Total != 16<<20 {
		t.Fatalf("backup job: %+v", j)
	}
	p := *j.Result.Point
	ps, err := s.Points(ctx, api.ListRequest{Domain: dom.Name})
	if err != nil || len(ps) != 1 || ps[0].ID != p.ID || len(ps[0].Disks) != 1 {
		t.Fatalf("points: %+v %v", ps, err)
	}
	for _, spec := range []string{p.ID, dom.Name + "@latest", dom.UUID + "@latest", dom.Name + "@" + p.Time.Add(time.Second).Format(time.RFC3339)} {
		if got, err := s.Point(ctx, api.PointRequest{Point: spec}); err != nil || got.ID != p.ID {
			t.Errorf("point %s: %+v %v", spec, got, err)
		}
	}
	var lines []string
	if err := s.Log(ctx, j.ID, false, func(l api.LogLine) error { lines = append(lines, l.Message); return nil }); err != nil || len(lines) == 0 {
		t.Fatalf("job log: %v %v", lines, err)
	}
	if _, err := s.CancelJob(ctx, j.ID); api.CodeOf(err) != api.CodeBadRequest {
		t.Errorf("cancel of an ended job: %v", err)
	}
	js, err := s.Jobs(ctx, api.JobsRequest{Domain: dom.Name})
	if err != nil || len(js) != 1 || js[0].ID != j.ID || js[0].State != api.Succeeded {
		t.Fatalf("jobs: %+v %v", js, err)
	}

	// A target whose repository is gone gets no new one while the catalog
	// knows its points.
	repo := filepath.Join(dir, "repo-"+mode)
	if err := os.Rename(repo, repo+".away"); err != nil {
		t.Fatal(err)
	}
	gj, err := s.Backup(ctx, api.BackupRequest{Domain: dom.Name})
	if err != nil {
		t.Fatal(err)
	}
	gj = waitJob(t, s, gj)
	os.Remove(repo)
	if err := os.Rename(repo+".away", repo); err != nil {
		t.Fatal(err)
	}
	if gj.State != api.Failed || gj.ErrorCode != api.CodeUnavailable || !strings.Contains(gj.Error, "is its storage mounted") || gj.Attempts != 5 {
		t.Fatalf("backup into a vanished repository: %+v", gj)
	}

	// Restore, export, verify.
	out := filepath.Join(dir, "restored")
	rj, err := s.Restore(ctx, api.RestoreRequest{Point: p.ID, To: out, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if rj = waitJob(t, s, rj); rj.State != api.Succeeded || len(rj.Result.Files) != 1 {
		t.Fatalf("restore: %+v", rj)
	}
	vda, _ := dom.Disk("vda")
	want, _ := testenv.ImageSHA256(ctx, vda.Path, "qcow2")
	if got, _ := testenv.ImageSHA256(ctx, rj.Result.Files[0], "qcow2"); got != want {
		t.Fatal("restored disk differs")
	}
	rj2, err := s.Restore(ctx, api.RestoreRequest{Point: p.ID, To: out})
	if err != nil {
		t.Fatal(err)
	}
	if rj2 = waitJob(t, s, rj2); rj2.State != api.Failed || rj2.ErrorCode != api.CodeExists {
		t.Fatalf("restore over the restored file: %+v", rj2)
	}
	vj, err := s.Verify(ctx, api.VerifyRequest{All: true, ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	if vj = waitJob(t, s, vj); vj.State != api.Succeeded || !vj.Result.Checks["local"].OK {
		t.Fatalf("verify: %+v", vj)
	}

	// A serve session: listed, read by nbdinfo, ended.
	sess, err := s.Serve(ctx, api.ServeRequest{Point: p.ID})
	if err != nil {
		t.Fatal(err)
	}
	if outb, err := exec.Command("nbdinfo", "--size", sess.URIs[0]).Output(); err != nil || strings.TrimSpace(string(outb)) != fmt.Sprint(16<<20) {
		t.Fatalf("nbdinfo %s: %s %v", sess.URIs[0], outb, err)
	}
	// The daemon holds and lists it; in a CLI's process it lives with the
	// command.
	ss, err := s.Sessions(ctx)
	if want := map[string]int{"daemon": 1, "local": 0}[mode]; err != nil || len(ss) != want || (want == 1 && ss[0].ID != sess.ID) {
		t.Fatalf("sessions: %+v %v", ss, err)
	}
	if err := s.EndSession(ctx, api.EndSessionRequest{ID: sess.ID}); err != nil {
		t.Fatal(err)
	}
	if ss, _ := s.Sessions(ctx); len(ss) != 0 {
		t.Fatalf("sessions after the end: %+v", ss)
	}
	if err := exec.Command("nbdinfo", sess.URIs[0]).Run(); err == nil {
		t.Fatal("the ended server still answers")
	}
	err = s.EndSession(ctx, api.EndSessionRequest{ID: sess.ID})
	wantCode(t, "end of an ended session", err, api.CodeNotFound)

	// Cancel a running backup: the job ends cancelled, the domain as before.
	if err := dom.Write(ctx, "vda", 0, 1<<20, 5); err != nil {
		t.Fatal(err)
	}
	cj, err := s.Backup(ctx, api.BackupRequest{Domain: dom.Name, Level: "full"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CancelJob(ctx, cj.ID); err != nil && api.CodeOf(err) != api.CodeBadRequest {
		t.Fatal(err)
	}
	if cj = waitJob(t, s, cj); cj.State != api.Cancelled && cj.State != api.Succeeded {
		t.Fatalf("cancelled backup: %+v", cj)
	}
	if _, err := dom.Dom.BackupGetXMLDesc(0); err == nil {
		t.Fatal("a libvirt backup job is left after the cancel")
	}
	if !errors.Is(ctx.Err(), nil) {
		t.Fatal(ctx.Err())
	}
	_ = os.RemoveAll(out)
}
