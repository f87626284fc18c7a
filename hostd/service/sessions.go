package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/boot"
	"github.com/virtkeep/virtkeep/hostd/catalog"
	"github.com/virtkeep/virtkeep/hostd/exports"
	"github.com/virtkeep/virtkeep/hostd/mount"
	"github.com/virtkeep/virtkeep/hostd/statedir"
	"github.com/virtkeep/virtkeep/nbd"
)

// liveSession is what this process runs for a session: an NBD server.
type liveSession struct {
	srv    *nbd.Server
	closer func()
}

func (l *liveSession) stop() {
	if l == nil {
		return
	}
	if l.srv != nil {
		l.srv.Close()
	}
	if l.closer != nil {
		l.closer()
	}
}

// sessionState is what undoing a session needs, kept in the catalog.
type sessionState struct {
	Socket   string            `json:"socket,omitempty"`
	SockDir  string            `json:"sock_dir,omitempty"` // made for the session, removed with it
	Overlays map[string]string `json:"overlays,omitempty"` // boot
}

var sessionIDRe = regexp.MustCompile(`^s-[0-9a-f]{12}$`)

func newSessionID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "s-" + hex.EncodeToString(b[:])
}

func (s *Service) holder(pid int) string {
	if pid == os.Getpid() && s.cfg.Mode == "daemon" {
		return "virtkeepd"
	}
	return fmt.Sprintf("pid %d", pid)
}

// startNBD serves point p (one disk, or all) read-only on ln's address in
// this process until the session ends. The point is held in its
// repository meanwhile (target.Hold), so no prune or GC on any host
// removes what the server reads.
func (s *Service) startNBD(ctx context.Context, t Target, p api.Point, disk string, ln net.Listener) (*liveSession, []nbd.Export, error) {
	repo, err := s.open(ctx, t, false)
	if err != nil {
		return nil, nil, err
	}
	hold, err := repo.Hold(ctx, p.ID, fmt.Sprintf("a session of %s", s.holder(os.Getpid())))
	if err != nil {
		repo.Close()
		return nil, nil, coded(err)
	}
	m, err := repo.Point(ctx, p.ID)
	if err == nil {
		var xs []nbd.Export
		xs, err = exports.Point(ctx, repo, m, disk, s.log)
		if err == nil && len(xs) == 0 {
			err = api.Errorf(api.CodeNotFound, "point %s has no disk %q", p.ID, disk)
		}
		if err == nil {
			srv := &nbd.Server{Logger: s.log, Exports: xs}
			go func() {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
					s.log.Error("NBD server", "point", p.ID, "err", err)
				}
			}()
			return &liveSession{srv: srv, closer: func() {
				_ = hold.Release(context.WithoutCancel(ctx))
				repo.Close()
			}}, xs, nil
		}
	}
	_ = hold.Release(context.WithoutCancel(ctx))
	repo.Close()
	return nil, nil, err
}

// listenUnix listens on a unix socket QEMU may connect to (instant
// recovery); other local users must not read the decrypted disk.
func listenUnix(sock string) (net.Listener, error) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	if err := statedir.ShareWithQEMU(sock, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// pointServer is how a mount or boot serves point p (one disk, or all):
// from a CLI's process, a detached `virtkeep serve` that outlives it
// (argv); from the daemon, a server in this process (start), *live set
// once it runs.
func (s *Service) pointServer(t Target, p api.Point, disk string, live **liveSession) (argv []string, start func(context.Context, string) error) {
	if s.cfg.ServeArgv != nil {
		return s.cfg.ServeArgv(p.ID, t.Name, disk), nil
	}
	return nil, s.inProcess(t, p, disk, live)
}

// holderPID is the process holding a session: the detached server when
// there is one, else this one.
func holderPID(servePID int) int {
	if servePID > 0 {
		return servePID
	}
	return os.Getpid()
}

// inProcess is the Start function of a mount or boot whose server runs
// here; *live is set once it runs.
func (s *Service) inProcess(t Target, p api.Point, disk string, live **liveSession) func(context.Context, string) error {
	return func(ctx context.Context, sock string) error {
		ln, err := listenUnix(sock)
		if err != nil {
			return err
		}
		l, _, err := s.startNBD(s.ctx, t, p, disk, ln)
		if err != nil {
			ln.Close()
			return err
		}
		*live = l
		return nil
	}
}

func (s *Service) keep(ctx context.Context, sess api.Session, pid int, st sessionState, live *liveSession) error {
	b, _ := json.Marshal(st)
	if err := s.cat.SaveSession(context.WithoutCancel(ctx), catalog.SessionRow{Session: sess, Holder: pid, State: b}); err != nil {
		return err
	}
	if live != nil {
		s.mu.Lock()
		s.sessions[sess.ID] = live
		s.mu.Unlock()
	}
	return nil
}

// Mount mounts a point's filesystems read-only under Dir.
func (s *Service) Mount(ctx context.Context, r api.MountRequest) (api.Session, error) {
	if err := checkAbs("directory", r.Dir); err != nil {
		return api.Session{}, err
	}
	if err := s.writable(); err != nil {
		return api.Session{}, err
	}
	p, t, err := s.resolveTarget(ctx, r.Point, r.Target)
	if err != nil {
		return api.Session{}, err
	}
	if r.Disk == "" && len(p.Disks) > 0 {
		r.Disk = p.Disks[0].Name
	}
	if err := pointDisk(p, r.Disk); err != nil {
		return api.Session{}, err
	}
	e := &mount.Mounter{State: s.state, Log: s.log}
	var live *liveSession
	req := mount.Request{Point: p.ID, Disk: r.Disk, Dir: r.Dir}
	req.Serve, req.Start = s.pointServer(t, p, r.Disk, &live)
	st, err := e.Mount(ctx, req)
	if err != nil {
		live.stop()
		return api.Session{}, coded(err)
	}
	pid := holderPID(st.ServePID)
	sess := api.Session{ID: newSessionID(), Kind: api.SessionMount, Point: p.ID, Target: t.Name, Created: time.Now().UTC(),
		Holder: s.holder(pid), Dir: st.Dir, Exports: []string{r.Disk}}
	for _, m := range st.Mounts {
		sess.Mounts = append(sess.Mounts, api.Mounted{Device: m.Device, Type: m.Type, Path: m.Path})
	}
	return sess, s.keep(ctx, sess, pid, sessionState{}, live)
}

// loopbackOnly refuses a listen address off this host: the NBD server has
// no TLS and no authentication, and it serves decrypted disks.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return api.Errorf(api.CodeBadRequest, "listen address %s: %v", addr, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return nil
	}
	return api.Errorf(api.CodeBadRequest, "listen address %s: only loopback addresses (127.0.0.1, [::1]): NBD is served without TLS or authentication", addr)
}

// Serve serves a point's disks read-only over NBD until the session ends.
func (s *Service) Serve(ctx context.Context, r api.ServeRequest) (api.Session, error) {
	if r.Listen != "" {
		if err := loopbackOnly(r.Listen); err != nil {
			return api.Session{}, err
		}
	}
	if r.Socket != "" {
		if err := checkAbs("socket", r.Socket); err != nil {
			return api.Session{}, err
		}
	}
	if r.Disk != "" {
		if err := checkDisks([]string{r.Disk}); err != nil {
			return api.Session{}, err
		}
	}
	p, t, err := s.resolveTarget(ctx, r.Point, r.Target)
	if err != nil {
		return api.Session{}, err
	}
	if r.Disk != "" {
		if err := pointDisk(p, r.Disk); err != nil {
			return api.Session{}, err
		}
	}
	sess := api.Session{ID: newSessionID(), Kind: api.SessionServe, Point: p.ID, Target: t.Name, Created: time.Now().UTC(), Holder: s.holder(os.Getpid())}
	var st sessionState
	ln, uriOf, err := s.serveListener(r, sess.ID, &st)
	if err != nil {
		return api.Session{}, err
	}
	live, xs, err := s.startNBD(s.ctx, t, p, r.Disk, ln)
	if err != nil {
		ln.Close()
		dropSocket(st)
		return api.Session{}, err
	}
	closeRepo := live.closer
	live.closer = func() { closeRepo(); dropSocket(st) }
	// One URI per export, the disk first; logical volumes found on it
	// follow as DISK/VG/LV.
	for _, x := range xs {
		sess.URIs = append(sess.URIs, uriOf(x.Name))
		sess.Exports = append(sess.Exports, x.Name)
	}
	if s.readOnly.Load() || s.cfg.Mode != "daemon" {
		// A server in a CLI's own process lives and dies with it (the
		// server of a mount made in process has the mount's record).
		s.mu.Lock()
		s.sessions[sess.ID] = live
		s.mu.Unlock()
		return sess, nil
	}
	if err := s.keep(ctx, sess, os.Getpid(), st, live); err != nil {
		live.stop()
		return api.Session{}, err
	}
	return sess, nil
}

func (s *Service) serveListener(r api.ServeRequest, id string, st *sessionState) (net.Listener, func(string) string, error) {
	if r.Listen != "" {
		ln, err := net.Listen("tcp", r.Listen)
		if err != nil {
			return nil, nil, api.WithCode(api.CodeBadRequest, err)
		}
		addr := ln.Addr().String()
		return ln, func(name string) string { return fmt.Sprintf("nbd://%s/%s", addr, name) }, nil
	}
	if r.Socket == "" {
		run, err := s.state.Run()
		if err != nil {
			return nil, nil, err
		}
		dir := filepath.Join(run, "serve-"+id)
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, nil, err
		}
		st.SockDir = dir
		if err := statedir.ShareWithQEMU(dir, 0o750); err != nil {
			dropSocket(*st)
			return nil, nil, err
		}
		r.Socket = filepath.Join(dir, "nbd.sock")
	}
	st.Socket = r.Socket
	ln, err := listenUnix(r.Socket)
	if err != nil {
		dropSocket(*st)
		return nil, nil, api.WithCode(api.CodeBadRequest, err)
	}
	sock := r.Socket
	return ln, func(name string) string { return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, sock) }, nil
}

func dropSocket(st sessionState) {
	if st.Socket != "" {
		os.Remove(st.Socket)
	}
	if base := filepath.Base(st.SockDir); st.SockDir != "" && (strings.HasPrefix(base, "serve-s-") || strings.HasPrefix(base, "boot-")) {
		os.RemoveAll(st.SockDir)
	}
}

// Boot starts a new domain from a point; with Migrate its disks then move
// to local files and nothing is left to hold.
func (s *Service) Boot(ctx context.Context, r api.BootRequest) (api.Session, error) {
	if err := checkDomainName("new domain name", r.Name); err != nil {
		return api.Session{}, err
	}
	if r.Dir == "" {
		r.Dir = filepath.Join(s.cfg.StateDir, "images", r.Name)
	}
	if err := checkAbs("directory", r.Dir); err != nil {
		return api.Session{}, err
	}
	if err := s.writable(); err != nil {
		return api.Session{}, err
	}
	p, t, err := s.resolveTarget(ctx, r.Point, r.Target)
	if err != nil {
		return api.Session{}, err
	}
	conn, err := s.libvirt()
	if err != nil {
		return api.Session{}, err
	}
	e := &boot.Booter{Conn: conn, State: s.state, Log: s.log, BootFileDirs: s.bootDirs}
	repo, err := s.open(ctx, t, false)
	if err != nil {
		return api.Session{}, err
	}
	defer repo.Close()
	var live *liveSession
	req := boot.Request{Point: p.ID, Name: r.Name, Dir: r.Dir, Strict: r.Strict}
	req.Serve, req.Start = s.pointServer(t, p, "", &live)
	b, err := e.Boot(ctx, repo, req)
	if err != nil {
		live.stop()
		return api.Session{}, coded(err)
	}
	pid := holderPID(b.ServePID)
	sess := api.Session{ID: newSessionID(), Kind: api.SessionBoot, Point: p.ID, Target: t.Name, Created: time.Now().UTC(),
		Holder: s.holder(pid), Dir: r.Dir, Domain: r.Name, UUID: b.UUID}
	if r.Migrate {
		if err := e.Migrate(ctx, b, r.Dir); err != nil {
			// Still running from the backup: keep the session.
			_ = s.keep(ctx, sess, pid, sessionState{Socket: b.Socket, SockDir: filepath.Dir(b.Socket), Overlays: b.Overlays}, live)
			return sess, coded(fmt.Errorf("domain %s runs from the backup still (session %s): %w", r.Name, sess.ID, err))
		}
		live.stop()
		dropSocket(sessionState{Socket: b.Socket, SockDir: filepath.Dir(b.Socket)})
		sess.Migrated = true
		return sess, nil
	}
	return sess, s.keep(ctx, sess, pid, sessionState{Socket: b.Socket, SockDir: filepath.Dir(b.Socket), Overlays: b.Overlays}, live)
}

// Sessions lists the sessions; those whose holder is gone are dropped.
func (s *Service) Sessions(ctx context.Context) ([]api.Session, error) {
	rows, err := s.cat.Sessions(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Session{}
	for _, r := range rows {
		if !s.heldHere(r.Session.ID) && !alive(r.Holder) && !s.readOnly.Load() {
			_ = s.undo(ctx, r)
			continue
		}
		out = append(out, r.Session)
	}
	return out, nil
}

// takeLive removes and returns this process's server of session id.
func (s *Service) takeLive(id string) *liveSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.sessions[id]
	delete(s.sessions, id)
	return l
}

func (s *Service) heldHere(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id] != nil
}

// EndSession undoes a session.
func (s *Service) EndSession(ctx context.Context, r api.EndSessionRequest) error {
	if (r.ID == "") == (r.Dir == "") {
		return api.Errorf(api.CodeBadRequest, "name a session by its ID or a mount by its directory")
	}
	if r.Dir != "" {
		if err := checkAbs("directory", r.Dir); err != nil {
			return err
		}
	}
	if r.ID != "" && !sessionIDRe.MatchString(r.ID) {
		return api.Errorf(api.CodeBadRequest, "session ID %q: want s- and 12 hex digits", r.ID)
	}
	rows, err := s.cat.Sessions(ctx)
	if err != nil {
		return err
	}
	for _, row := range rows {
		if row.Session.ID == r.ID || (r.Dir != "" && row.Session.Kind == api.SessionMount && row.Session.Dir == filepath.Clean(r.Dir)) {
			if err := s.writable(); err != nil {
				return err
			}
			return s.undo(ctx, row)
		}
	}
	if l := s.takeLive(r.ID); l != nil { // a server of this process, unrecorded
		l.stop()
		return nil
	}
	if err := s.writable(); err != nil {
		return err
	}
	if r.Dir != "" {
		// A mount recorded only in state_dir/mounts (made before the
		// catalog held sessions).
		return coded((&mount.Mounter{State: s.state, Log: s.log}).Umount(ctx, r.Dir))
	}
	return api.Errorf(api.CodeNotFound, "no session %s", r.ID)
}

// undo ends one session and forgets it.
func (s *Service) undo(ctx context.Context, row catalog.SessionRow) error {
	sess := row.Session
	var st sessionState
	_ = json.Unmarshal(row.State, &st)
	live := s.takeLive(sess.ID)
	var err error
	switch sess.Kind {
	case api.SessionMount:
		m := &mount.Mounter{State: s.state, Log: s.log}
		if uerr := m.Umount(ctx, sess.Dir); uerr != nil && !errors.Is(uerr, mount.ErrNotMounted) {
			err = uerr
		}
	case api.SessionServe:
		if live == nil && row.Holder != os.Getpid() {
			stopServer(row.Holder)
		}
		dropSocket(st)
	case api.SessionBoot:
		err = s.endBoot(ctx, sess, st, row.Holder, live == nil)
	}
	live.stop()
	if err != nil && api.CodeOf(err) != api.CodeNotFound {
		return err
	}
	return s.cat.DeleteSession(context.WithoutCancel(ctx), sess.ID)
}

// endBoot destroys a domain booted from a backup (it is transient: it
// goes with it); its overlays, which hold what the guest wrote, are
// removed.
func (s *Service) endBoot(ctx context.Context, sess api.Session, st sessionState, holder int, remote bool) error {
	conn, err := s.libvirt()
	if err != nil {
		return err
	}
	if err := (&boot.Booter{Conn: conn, Log: s.log}).DestroyBooted(ctx, sess.UUID); err != nil {
		return err
	}
	if remote {
		stopServer(holder)
	}
	for _, o := range st.Overlays {
		os.Remove(o)
	}
	dropSocket(st)
	s.log.Info("booted domain ended", "domain", sess.Domain, "uuid", sess.UUID, "session", sess.ID)
	return nil
}

// stopServer stops the NBD server process pid of a CLI run in its own
// process, if pid is still such a process.
func stopServer(pid int) {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if pid <= 0 || err != nil || !strings.Contains(string(cmdline), "serve") {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
}

// recoverSessions, at daemon start, undoes the sessions whose holder is
// gone (the mounts themselves were undone by the engine's CleanupMounts).
func (s *Service) recoverSessions(ctx context.Context) error {
	rows, err := s.cat.Sessions(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rows {
		if r.Holder != os.Getpid() && alive(r.Holder) && r.Session.Kind != api.SessionMount {
			continue
		}
		s.log.Warn("session ended: its holder stopped", "session", r.Session.ID, "kind", r.Session.Kind, "holder", r.Session.Holder)
		if err := s.undo(ctx, r); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// EndHeld ends every session this process holds (the daemon stopping):
// their servers stop with it, so nothing may be left reading from them.
func (s *Service) EndHeld(ctx context.Context) error {
	rows, err := s.cat.Sessions(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rows {
		if r.Holder == os.Getpid() {
			if err := s.undo(ctx, r); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
