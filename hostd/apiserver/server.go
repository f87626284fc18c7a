// Package apiserver serves an api.Service as HTTP+JSON on a unix socket
// (docs/API.md): every caller is identified by SO_PEERCRED and must be
// root or a member of the socket's group, bodies are bounded and decoded
// strictly, and job progress and logs stream as NDJSON.
package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// MaxBody bounds a request body.
const MaxBody = 1 << 20

// Server serves Service.
type Server struct {
	Service api.Service
	Log     *slog.Logger
	// GID is the group whose members may call besides root (-1: none).
	GID int

	once sync.Once
	srv  *http.Server
}

type peerKey struct{}

// Peer is the process at the other end of a connection.
type Peer struct{ PID, UID, GID int }

func (p Peer) String() string { return fmt.Sprintf("uid %d gid %d pid %d", p.UID, p.GID, p.PID) }

// Listen makes the socket at path: 0660, group gid (when >= 0), an old
// socket left by a previous run replaced.
func Listen(path string, gid int) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		if err := os.Chown(path, 0, gid); err != nil {
			ln.Close()
			return nil, err
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// http is the HTTP server, made once.
func (s *Server) http() *http.Server {
	s.once.Do(func() {
		if s.Log == nil {
			s.Log = slog.New(slog.DiscardHandler)
		}
		s.srv = &http.Server{
			Handler:           s.routes(),
			ReadHeaderTimeout: 10 * time.Second,
			MaxHeaderBytes:    64 << 10,
			ConnContext: func(ctx context.Context, c net.Conn) context.Context {
				return context.WithValue(ctx, peerKey{}, peerOf(c))
			},
		}
	})
	return s.srv
}

// Serve answers on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http().Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops taking requests and ends the open ones (streams too).
func (s *Server) Shutdown(ctx context.Context) error {
	srv := s.http()
	err := srv.Shutdown(ctx)
	srv.Close()
	return err
}

func peerOf(c net.Conn) *Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return nil
	}
	return &Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}
}

// allowed: root, or the group as primary or supplementary group of the
// calling process.
func (s *Server) allowed(p *Peer) bool {
	if p == nil {
		return false
	}
	if p.UID == 0 {
		return true
	}
	if s.GID < 0 {
		return false
	}
	if p.GID == s.GID {
		return true
	}
	return slices.Contains(supplementaryGroups(p.PID), s.GID)
}

func supplementaryGroups(pid int) []int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Groups:"); ok {
			var out []int
			for _, g := range strings.Fields(rest) {
				if n, err := strconv.Atoi(g); err == nil {
					out = append(out, n)
				}
			}
			return out
		}
	}
	return nil
}

// PeerFrom returns the caller of a request.
func PeerFrom(ctx context.Context) *Peer {
	p, _ := ctx.Value(peerKey{}).(*Peer)
	return p
}

// guard identifies, authorizes and logs every request, and refuses paths
// with dot segments before the mux would redirect them.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := PeerFrom(r.Context())
		if !s.allowed(p) {
			who := "unknown peer"
			if p != nil {
				who = p.String()
			}
			s.Log.Warn("API caller refused", "peer", who, "method", r.Method, "path", r.URL.Path)
			writeError(w, api.Errorf(api.CodeForbidden, "%s may not use virtkeepd: root or the socket's group only", who))
			return
		}
		for _, seg := range strings.Split(r.URL.EscapedPath(), "/") {
			if u, err := pathUnescape(seg); err != nil || u == "." || u == ".." || strings.ContainsAny(u, "/\x00") {
				writeError(w, api.Errorf(api.CodeBadRequest, "path %q: bad element %q", r.URL.EscapedPath(), seg))
				return
			}
		}
		s.Log.Info("API request", "peer", p.String(), "method", r.Method, "path", r.URL.Path)
		next.ServeHTTP(w, r)
	})
}

func writeError(w http.ResponseWriter, err error) {
	code := api.CodeOf(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(api.HTTPStatus(code))
	_ = json.NewEncoder(w).Encode(api.Error{Code: code, Message: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a bounded JSON body into v strictly: unknown fields,
// trailing data and bodies over MaxBody are errors.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return api.Errorf(api.CodeBadRequest, "content type %q: want application/json", ct)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(api.CodeBadRequest, "request body over %d bytes", MaxBody)
		}
		return api.Errorf(api.CodeBadRequest, "request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.Errorf(api.CodeBadRequest, "request body: data after the JSON value")
	}
	return nil
}
