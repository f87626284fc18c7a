package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// fake is an api.Service that records calls; what it does not override
// panics (and fails the test through the server's recovery).
type fake struct {
	api.Service
	calls atomic.Int32
}

func (f *fake) Backup(_ context.Context, r api.BackupRequest) (api.Job, error) {
	f.calls.Add(1)
	return api.Job{ID: "20260101T000000Z-00000001", Kind: api.KindBackup, Domain: r.Domain, State: api.Queued}, nil
}

func (f *fake) Job(_ context.Context, id string) (api.Job, error) {
	f.calls.Add(1)
	return api.Job{}, api.Errorf(api.CodeNotFound, "no job %s", id)
}

func (f *fake) Version(context.Context) (api.VersionInfo, error) {
	f.calls.Add(1)
	return api.VersionInfo{Version: "t", API: api.Version, Mode: "daemon"}, nil
}

func serveFake(t *testing.T, gid int, mode os.FileMode) (string, *fake) {
	t.Helper()
	// Open to other users: the callers of TestCallers run as nobody.
	dir, err := os.MkdirTemp("", "vk-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "s.sock")
	ln, err := Listen(sock, gid)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(sock); gid >= 0 && fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want 0660", fi.Mode().Perm())
	}
	os.Chmod(sock, mode)
	f := &fake{}
	srv := &Server{Service: f, GID: gid}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return sock, f
}

func httpClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
}

// TestBadRequests: malformed requests are refused with a clear error and
// reach no operation.
func TestBadRequests(t *testing.T) {
	sock, f := serveFake(t, -1, 0o600)
	hc := httpClient(sock)
	huge := `{"domain": "` + strings.Repeat("a", MaxBody) + `"}`
	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/v1/backups", `{"domain": "vm"`, 400, "request body"},
		{"POST", "/v1/backups", `["vm"]`, 400, "request body"},
		{"POST", "/v1/backups", `{"domain": "vm", "bogus": 1}`, 400, `unknown field "bogus"`},
		{"POST", "/v1/backups", `{"domain": "vm"} {"domain": "vm2"}`, 400, "data after"},
		{"POST", "/v1/backups", huge, 400, "over 1048576 bytes"},
		{"POST", "/v1/backups", `{"domain": 7}`, 400, "request body"},
		{"GET", "/v1/jobs/%2e%2e", "", 400, "bad element"},
		{"GET", "/v1/jobs/../../etc/passwd", "", 400, "bad element"},
		{"GET", "/v1/points/a%2fb", "", 400, "bad element"},
		{"GET", "/v1/nothing", "", 404, "no endpoint"},
		{"DELETE", "/v1/backups", "", 404, "no endpoint"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, "http://x"+c.path, strings.NewReader(c.body))
		req.URL.RawPath = c.path // keep escapes and dot segments as sent
		req.URL.Path, _ = pathUnescape(c.path)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e api.Error
		if resp.StatusCode != c.status || json.Unmarshal(b, &e) != nil || !strings.Contains(e.Message, c.want) {
			t.Errorf("%s %s %.40q: %d %s, want %d %q", c.method, c.path, c.body, resp.StatusCode, b, c.status, c.want)
		}
	}
	if n := f.calls.Load(); n != 0 {
		t.Fatalf("%d operations ran for bad requests", n)
	}
	// A good one passes.
	resp, err := hc.Post("http://x/v1/backups", "application/json", bytes.NewReader([]byte(`{"domain": "vm"}`)))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("good request: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestCallers: root is let in; a process of another user is refused with
// 403 before anything runs, unless the socket's group is among its groups.
func TestCallers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run callers as other users")
	}
	const gid = 4242
	sock, f := serveFake(t, gid, 0o666) // open, so others reach the check
	// A copy of this test binary that nobody may run.
	self, _ := os.Executable()
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(filepath.Dir(sock), "caller.test")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	call := func(cred *syscall.Credential) string {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), "VIRTKEEP_API_CALL="+sock, "GOCOVERDIR=", "TMPDIR="+filepath.Dir(sock))
		cmd.Dir = filepath.Dir(sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("caller %+v: %v %s", cred, err, out)
		}
		t.Logf("caller %+v: %s", cred, out)
		return strings.TrimSpace(string(out))
	}
	if got := call(&syscall.Credential{Uid: 65534, Gid: 65534}); !strings.HasPrefix(got, "403") || !strings.Contains(got, "uid 65534") {
		t.Fatalf("nobody got %q, want 403", got)
	}
	if n := f.calls.Load(); n != 0 {
		t.Fatalf("an operation ran for a refused caller (%d)", n)
	}
	if got := call(&syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{gid}}); !strings.HasPrefix(got, "200") {
		t.Fatalf("a member of the group got %q, want 200", got)
	}
	if got := call(nil); !strings.HasPrefix(got, "200") {
		t.Fatalf("root got %q, want 200", got)
	}
}

// TestMain makes this binary the caller process of TestCallers when
// VIRTKEEP_API_CALL names a socket: it asks for the version and prints the
// status and body.
func TestMain(m *testing.M) {
	if sock := os.Getenv("VIRTKEEP_API_CALL"); sock != "" {
		resp, err := httpClient(sock).Get("http://x/v1/version")
		if err != nil {
			fmt.Println("error", err)
			os.Exit(0)
		}
		b, _ := io.ReadAll(resp.Body)
		fmt.Println(resp.StatusCode, string(b))
		os.Exit(0)
	}
	os.Exit(m.Run())
}
