package testenv

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// server is a child process the test owns: started, killed and restarted
// on the same address.
type server struct {
	t    testing.TB
	name string
	args []string
	addr string

	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *bytes.Buffer
	exited chan struct{}
}

func (s *server) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(s.args[0], s.args[1:]...)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// A group of its own: Kill ends the server's children too (sshd's
	// per-connection processes), as a crash of the host would.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		Unavailable(s.t, "%s: %v", s.name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.out, s.exited = cmd, out, exited
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			s.t.Fatalf("testenv: %s %v exited: %s", s.name, s.args, out.String())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("testenv: %s did not listen on %s: %s", s.name, s.addr, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops the server at once (SIGKILL), as a crash or a network cut
// would; Start brings it back on the same address.
func (s *server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	// sshd's connection processes call setsid: find them by parentage.
	pids := append(descendants(s.cmd.Process.Pid), s.cmd.Process.Pid)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Start restarts a killed server.
func (s *server) Start() { s.start() }

func (s *server) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return s.out.String()
}

// descendants lists the processes below pid, read from /proc.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out = append(out, c)
			walk(c)
		}
	}
	walk(pid)
	return out
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newServer(t testing.TB, name, addr string, args ...string) *server {
	s := &server{t: t, name: name, args: args, addr: addr}
	s.start()
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("testenv: %s log:\n%s", name, s.log())
		}
	})
	return s
}

// SSHServer is OpenSSH's sshd on 127.0.0.1, for the SFTP target.
type SSHServer struct {
	*server
	Host           string
	Port           int
	User           string
	IdentityFile   string // the client's private key
	KnownHostsFile string // holds the server's host key
	HostKeyFile    string // the server's private host key
	Dir            string // a scratch directory the user may write
}

// SSHD starts sshd on a free port of 127.0.0.1 for the rest of the test,
// with a fresh host key and a fresh client key authorized for the current
// user, and the SFTP subsystem (internal-sftp).
func SSHD(t testing.TB) *SSHServer {
	t.Helper()
	Integration(t)
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		if sshd, err = exec.LookPath("/usr/sbin/sshd"); err != nil {
			Unavailable(t, "sshd not found (run make deps: openssh-server)")
		}
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	dir := TempDir(t)
	hostKey := filepath.Join(dir, "host_ed25519")
	clientKey := filepath.Join(dir, "id_ed25519")
	hostPub := writeKey(t, hostKey)
	clientPub := writeKey(t, clientKey)
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	kh := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(kh, []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostPub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`ListenAddress %s
HostKey %s
PidFile none
AuthorizedKeysFile %s
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
Subsystem sftp internal-sftp
`, addr, hostKey, filepath.Join(dir, "authorized_keys"))
	cfgPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	s := newServer(t, "sshd", addr, sshd, "-D", "-e", "-f", cfgPath)
	return &SSHServer{server: s, Host: "127.0.0.1", Port: port, User: u.Username, IdentityFile: clientKey, KnownHostsFile: kh, HostKeyFile: hostKey, Dir: data}
}

// writeKey writes a new ed25519 private key in OpenSSH format and returns
// its public half.
func writeKey(t testing.TB, path string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// S3Server is a real S3 server on 127.0.0.1 (Versity's S3 gateway on a
// POSIX directory), for the S3 target.
type S3Server struct {
	*server
	Endpoint  string // host:port, plain HTTP
	Region    string
	AccessKey string
	SecretKey string
	Dir       string // where the gateway keeps buckets
}

// S3Binary is where make deps installs the S3 server.
const S3Binary = "/var/lib/virtkeep/bin/versitygw"

// S3 starts an S3 server on a free port of 127.0.0.1 for the rest of the
// test, with fresh credentials and no buckets.
func S3(t testing.TB) *S3Server {
	t.Helper()
	Integration(t)
	bin := S3Binary
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("versitygw"); err != nil {
			Unavailable(t, "S3 server %s not found (run make deps)", S3Binary)
		}
	}
	dir := filepath.Join(TempDir(t), "s3")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	access, secret := "vk"+hex.EncodeToString(rnd[:4]), hex.EncodeToString(rnd[4:])
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	s := newServer(t, "versitygw", addr, bin, "--access", access, "--secret", secret, "--port", addr, "--quiet", "posix", dir)
	// The gateway answers TCP before it serves: wait for an HTTP answer.
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: S3 server on %s does not answer: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &S3Server{server: s, Endpoint: addr, Region: "us-east-1", AccessKey: access, SecretKey: secret, Dir: dir}
}
