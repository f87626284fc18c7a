package sftp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/secret"
)

// DefaultConnections is how many SSH connections a target uses unless
// configured: one for each pack a backup stores at once, and two more
// for reads.
const DefaultConnections = 8

// Config configures an SFTP backend.
type Config struct {
	// Host and Port of the SSH server (Port 0 means 22).
	Host string
	Port int
	// User to log in as.
	User string
	// Path is the repository directory on the server, absolute or relative
	// to the user's home; it is created (mode 0700) if missing.
	Path string
	// IdentityFile is the private key to authenticate with (unencrypted:
	// the daemon runs unattended).
	IdentityFile string
	// KnownHostsFile lists the server's host key. A server whose key is
	// not in it is refused.
	KnownHostsFile string
	// Connections is how many SSH connections carry requests (0 means
	// DefaultConnections). Each has one SFTP session, whose SSH channel
	// window (2 MiB at OpenSSH) bounds what it carries per round trip:
	// 40 ms away, one session writes about 35 MB/s whatever the packet
	// size or the requests in flight, so a remote target needs several.
	Connections int
	// Timeout bounds dialling and the SSH handshake, and how long a
	// connection may stay silent before it is dropped (0 means 30 s).
	Timeout time.Duration
}

// SFTP is a target.Backend on a directory of an SSH server.
type SFTP struct {
	cfg      Config
	auth     ssh.Signer
	hostKeys ssh.HostKeyCallback
	root     string // absolute path of the repository on the server
	fsync    bool   // the server offers fsync@openssh.com

	next  atomic.Uint32
	mu    sync.Mutex
	slots []*conn // nil: dial on next use
	done  chan struct{}
	once  sync.Once
}

type conn struct {
	ssh  *ssh.Client
	c    *sftp.Client
	dead chan struct{} // closed when the connection is dropped
	once sync.Once
}

func (c *conn) close() {
	c.once.Do(func() {
		close(c.dead)
		c.c.Close()
		c.ssh.Close()
	})
}

// ErrHostKey is wrapped by errors for a server whose host key is unknown
// or does not match the known_hosts file.
var ErrHostKey = errors.New("ssh host key not trusted")

var _ target.Backend = (*SFTP)(nil)

// Open connects to the server and opens (creating if needed) the
// repository directory.
func Open(ctx context.Context, cfg Config) (*SFTP, error) {
	if cfg.Host == "" || cfg.User == "" || cfg.Path == "" {
		return nil, errors.New("sftp: host, user and path are required")
	}
	if cfg.IdentityFile == "" {
		return nil, errors.New("sftp: no identity file")
	}
	if cfg.KnownHostsFile == "" {
		return nil, errors.New("sftp: no known_hosts file (the server's host key must be known)")
	}
	if cfg.Port == 0 {
		cfg.Port = 22
	}
	if cfg.Connections <= 0 {
		cfg.Connections = DefaultConnections
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	pem, err := secret.ReadFile(cfg.IdentityFile)
	if err != nil {
		return nil, fmt.Errorf("sftp: identity file: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		return nil, fmt.Errorf("sftp: identity file %s: %w", cfg.IdentityFile, err)
	}
	hk, err := knownhosts.New(cfg.KnownHostsFile)
	if err != nil {
		return nil, fmt.Errorf("sftp: known_hosts file: %w", err)
	}
	s := &SFTP{cfg: cfg, auth: signer, hostKeys: hk, slots: make([]*conn, cfg.Connections), done: make(chan struct{})}
	c, err := s.conn(ctx, 0) // errors name the server already
	if err != nil {
		return nil, err
	}
	if err := s.openRoot(c); err != nil {
		s.Close()
		return nil, fmt.Errorf("sftp: %s: %w", s.name(), err)
	}
	return s, nil
}

// openRoot checks the server's extensions and makes the repository
// directory (mode 0700), on the first connection.
func (s *SFTP) openRoot(c *conn) error {
	if _, ok := c.c.HasExtension("posix-rename@openssh.com"); !ok {
		return errors.New("the server lacks posix-rename@openssh.com, which atomic puts need")
	}
	_, s.fsync = c.c.HasExtension("fsync@openssh.com")
	root := s.cfg.Path
	if !path.IsAbs(root) {
		var err error
		if root, err = c.c.RealPath(root); err != nil {
			return err
		}
	}
	s.root = path.Clean(root)
	if err := c.c.MkdirAll(s.root); err != nil {
		return fmt.Errorf("create %s: %w", s.root, err)
	}
	if err := c.c.Chmod(s.root, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", s.root, err)
	}
	return nil
}

func (s *SFTP) name() string {
	return fmt.Sprintf("%s@%s", s.cfg.User, net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port)))
}

// conn returns slot i's connection, dialling it when needed.
func (s *SFTP) conn(ctx context.Context, i int) (*conn, error) {
	s.mu.Lock()
	c := s.slots[i]
	s.mu.Unlock()
	if c != nil {
		return c, nil
	}
	select {
	case <-s.done:
		return nil, fmt.Errorf("sftp: %s: %w", s.name(), net.ErrClosed)
	default:
	}
	c, err := s.dial(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slots[i] != nil { // dialled meanwhile by another request
		c.close()
		return s.slots[i], nil
	}
	s.slots[i] = c
	return c, nil
}

func (s *SFTP) dial(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sftp: %s: %w", s.name(), err)
	}
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	var hostErr error
	cc, chans, reqs, err := ssh.NewClientConn(nc, addr, &ssh.ClientConfig{
		User: s.cfg.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(s.auth)},
		HostKeyCallback: func(host string, remote net.Addr, key ssh.PublicKey) error {
			if err := s.hostKeys(host, remote, key); err != nil {
				hostErr = fmt.Errorf("%w: %s key %s for %s is not in %s (%v)", ErrHostKey, key.Type(), ssh.FingerprintSHA256(key), host, s.cfg.KnownHostsFile, err)
				return hostErr
			}
			return nil
		},
		Timeout: s.cfg.Timeout,
	})
	if err != nil {
		nc.Close()
		if hostErr != nil {
			err = hostErr
		}
		return nil, fmt.Errorf("sftp: %s: %w", s.name(), err)
	}
	_ = nc.SetDeadline(time.Time{})
	sc := ssh.NewClient(cc, chans, reqs)
	fc, err := sftp.NewClient(sc, sftp.UseConcurrentWrites(true), sftp.UseConcurrentReads(true), sftp.MaxConcurrentRequestsPerFile(64))
	if err != nil {
		sc.Close()
		return nil, fmt.Errorf("sftp: %s: start sftp subsystem: %w", s.name(), err)
	}
	c := &conn{ssh: sc, c: fc, dead: make(chan struct{})}
	go s.keepalive(c)
	return c, nil
}

// keepalive drops a connection that stops answering, so that requests
// waiting on it fail instead of hanging, and the next one dials anew.
func (s *SFTP) keepalive(c *conn) {
	t := time.NewTicker(s.cfg.Timeout / 2)
	defer t.Stop()
	for {
		select {
		case <-c.dead:
			return
		case <-s.done:
			return
		case <-t.C:
		}
		answered := make(chan error, 1)
		go func() {
			_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
			answered <- err
		}()
		select {
		case err := <-answered:
			if err == nil {
				continue
			}
		case <-time.After(s.cfg.Timeout):
		case <-c.dead:
			return
		}
		s.drop(c)
		return
	}
}

func (s *SFTP) drop(c *conn) {
	s.mu.Lock()
	for i, x := range s.slots {
		if x == c {
			s.slots[i] = nil
		}
	}
	s.mu.Unlock()
	c.close()
}

// lost tells whether err means the connection is gone.
func lost(err error) bool {
	var ne net.Error
	return errors.Is(err, sftp.ErrSSHFxConnectionLost) || errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne)
}

// do runs fn on a connection, dialling again and retrying once when the
// connection turns out to be lost (every operation here may be repeated).
func (s *SFTP) do(ctx context.Context, fn func(c *sftp.Client) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	i := int(s.next.Add(1)) % len(s.slots)
	for attempt := 0; ; attempt++ {
		c, err := s.conn(ctx, i)
		if err != nil {
			return err
		}
		err = fn(c.c)
		if err == nil || !lost(err) || attempt > 0 {
			return err
		}
		s.drop(c)
	}
}

func (s *SFTP) path(key string) (string, error) {
	if err := target.CheckKey(key); err != nil {
		return "", fmt.Errorf("sftp: %w", err)
	}
	return path.Join(s.root, key), nil
}

// Put writes data to a temporary file, fsyncs it and renames it over key.
func (s *SFTP) Put(ctx context.Context, key string, data []byte) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	err = s.do(ctx, func(c *sftp.Client) error {
		tmp := path.Join(path.Dir(p), target.TempName())
		f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if errors.Is(err, fs.ErrNotExist) {
			if err = c.MkdirAll(path.Dir(p)); err == nil {
				f, err = c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
			}
		}
		if err != nil {
			return err
		}
		_, err = f.Write(data)
		if err == nil && s.fsync {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = c.PosixRename(tmp, p)
		}
		if err != nil && !lost(err) {
			_ = c.Remove(tmp)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("sftp: put %s: %w", key, err)
	}
	return nil
}

// smallRead is the largest range Get reads without a Stat.
const smallRead = 1 << 20

// Get reads a range of the object.
func (s *SFTP) Get(ctx context.Context, key string, off, length int64) ([]byte, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("sftp: get %s: negative offset %d", key, off)
	}
	var out []byte
	err = s.do(ctx, func(c *sftp.Client) error {
		f, err := c.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		// Allocate what exists, never more than asked: a small range (a
		// chunk in a pack) is read without asking the size first, which
		// costs a round trip.
		n := length
		if n < 0 || n > smallRead {
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			if left := max(fi.Size()-off, 0); n < 0 || n > left {
				n = left
			}
		}
		b := make([]byte, n)
		got, err := f.ReadAt(b, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		out = b[:got]
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sftp: %s: %w", key, target.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sftp: get %s: %w", key, err)
	}
	return out, nil
}

// Stat describes the object.
func (s *SFTP) Stat(ctx context.Context, key string) (target.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return target.ObjectInfo{}, err
	}
	var fi os.FileInfo
	err = s.do(ctx, func(c *sftp.Client) error {
		fi, err = c.Stat(p)
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return target.ObjectInfo{}, fmt.Errorf("sftp: %s: %w", key, target.ErrNotFound)
	}
	if err != nil {
		return target.ObjectInfo{}, fmt.Errorf("sftp: stat %s: %w", key, err)
	}
	return target.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List walks the directory under prefix.
func (s *SFTP) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	dir := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		dir = path.Join(dir, prefix[:i])
	}
	called := false
	err := s.do(ctx, func(c *sftp.Client) error {
		if called {
			return fmt.Errorf("connection lost during the listing: %w", sftp.ErrSSHFxConnectionLost)
		}
		return walkFiles(ctx, c, dir, func(p string, fi os.FileInfo) error {
			if target.IsTemp(fi.Name()) {
				return nil
			}
			key := strings.TrimPrefix(p, s.root+"/")
			if !strings.HasPrefix(key, prefix) {
				return nil
			}
			called = true
			if err := fn(target.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return &stop{err}
			}
			return nil
		})
	})
	var st *stop
	if errors.As(err, &st) {
		return st.err
	}
	if err != nil {
		return fmt.Errorf("sftp: list %q: %w", prefix, err)
	}
	return nil
}

// stop carries fn's error out of a listing untouched.
type stop struct{ err error }

func (s *stop) Error() string { return s.err.Error() }

// Delete removes the object.
func (s *SFTP) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	err = s.do(ctx, func(c *sftp.Client) error { return c.Remove(p) })
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sftp: delete %s: %w", key, err)
	}
	return nil
}

// Sync has nothing left to do: every put fsynced its file before it
// returned (when the server offers fsync@openssh.com; without it,
// durability is the server's). Directories cannot be fsynced over SFTP.
// It checks that the server still answers.
func (s *SFTP) Sync(ctx context.Context) error {
	err := s.do(ctx, func(c *sftp.Client) error { _, err := c.Stat(s.root); return err })
	if err != nil {
		return fmt.Errorf("sftp: sync: %w", err)
	}
	return nil
}

// SyncObjects does nothing more than Sync: directories cannot be fsynced
// over SFTP, and every put fsynced its file.
func (s *SFTP) SyncObjects(ctx context.Context, _ []string) error { return s.Sync(ctx) }

// Properties describes the backend.
func (s *SFTP) Properties() target.Properties {
	return target.Properties{Name: "sftp:" + s.name() + ":" + s.root}
}

// Close closes the connections.
func (s *SFTP) Close() error {
	s.once.Do(func() {
		close(s.done)
		s.mu.Lock()
		slots := s.slots
		s.slots = make([]*conn, len(slots))
		s.mu.Unlock()
		for _, c := range slots {
			if c != nil {
				c.close()
			}
		}
	})
	return nil
}

var _ target.TempSweeper = (*SFTP)(nil)

// SweepTemp removes temporary files older than cutoff (see
// target.TempSweeper).
func (s *SFTP) SweepTemp(ctx context.Context, cutoff time.Time) (int, error) {
	n := 0
	err := s.do(ctx, func(c *sftp.Client) error {
		return walkFiles(ctx, c, s.root, func(p string, fi os.FileInfo) error {
			if !target.IsTemp(fi.Name()) || !fi.ModTime().Before(cutoff) {
				return nil
			}
			if err := c.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			n++
			return nil
		})
	})
	if err != nil {
		return n, fmt.Errorf("sftp: sweep temporary files: %w", err)
	}
	return n, nil
}

// listDirs is how many directories a listing reads at once: each costs
// round trips (open, read, close), and packs/ alone holds 256.
const listDirs = 16

// walkFiles calls fn with every file under dir (missing: none), in
// lexical order of path, after reading the directories listDirs at once.
func walkFiles(ctx context.Context, c *sftp.Client, dir string, fn func(p string, fi os.FileInfo) error) error {
	type file struct {
		p  string
		fi os.FileInfo
	}
	var (
		mu    sync.Mutex
		files []file
		first error
		wg    sync.WaitGroup
		sem   = make(chan struct{}, listDirs)
	)
	fail := func(err error) {
		mu.Lock()
		first = cmp.Or(first, err)
		mu.Unlock()
	}
	var visit func(d string)
	visit = func(d string) {
		defer wg.Done()
		if err := ctx.Err(); err != nil {
			fail(err)
			return
		}
		sem <- struct{}{}
		fis, err := c.ReadDir(d)
		<-sem
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				fail(err)
			}
			return
		}
		for _, fi := range fis {
			p := path.Join(d, fi.Name())
			if fi.IsDir() {
				wg.Add(1)
				go visit(p)
				continue
			}
			mu.Lock()
			files = append(files, file{p, fi})
			mu.Unlock()
		}
	}
	wg.Add(1)
	visit(dir)
	wg.Wait()
	if first != nil {
		return first
	}
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.p, b.p) })
	for _, f := range files {
		if err := fn(f.p, f.fi); err != nil {
			return err
		}
	}
	return nil
}
