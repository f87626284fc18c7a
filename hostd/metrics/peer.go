package metrics

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
)

// localOnly lets through, on a loopback listener without a token, only
// scrapes from root's processes or those of a user in group gid: /metrics
// names domains and targets, and loopback is open to every local user.
// The client's user is the owner of its end of the connection, read from
// /proc/net/tcp and tcp6.
func localOnly(gid int, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, ok := tcpOwner(r.RemoteAddr, r.Context().Value(http.LocalAddrContextKey))
		if !ok || !allowedUID(uid, gid) {
			http.Error(w, "forbidden: /metrics is for root and the virtkeep group (or configure a token)", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// allowedUID: root, or a user whose groups include gid (gid >= 0).
func allowedUID(uid, gid int) bool {
	if uid == 0 {
		return true
	}
	if gid < 0 {
		return false
	}
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return false
	}
	gs, _ := u.GroupIds()
	return u.Gid == strconv.Itoa(gid) || slices.Contains(gs, strconv.Itoa(gid))
}

// tcpOwner finds the uid owning the TCP socket whose local end is remote
// (the client's address as the server sees it) and whose peer is local.
func tcpOwner(remote string, local any) (int, bool) {
	la, ok := local.(net.Addr)
	if !ok {
		return 0, false
	}
	client, err := procAddr(remote)
	if err != nil {
		return 0, false
	}
	server, err := procAddr(la.String())
	if err != nil {
		return 0, false
	}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if uid, ok := scanTCP(f, client, server); ok {
			return uid, true
		}
	}
	return 0, false
}

// procAddr writes host:port as /proc/net/tcp does: the address in host
// byte order per 32-bit word, in hex, then the port.
func procAddr(hostport string) (string, error) {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(h)
	port, err := strconv.Atoi(p)
	if ip == nil || err != nil {
		return "", fmt.Errorf("address %q", hostport)
	}
	raw := []byte(ip.To4())
	if raw == nil {
		raw = []byte(ip.To16())
	}
	var b strings.Builder
	for i := 0; i < len(raw); i += 4 {
		var w [4]byte
		binary.LittleEndian.PutUint32(w[:], binary.BigEndian.Uint32(raw[i:i+4]))
		b.WriteString(strings.ToUpper(hex.EncodeToString(w[:])))
	}
	return fmt.Sprintf("%s:%04X", b.String(), port), nil
}

func scanTCP(file, local, remote string) (int, bool) {
	f, err := os.Open(file)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 8 || fs[1] != local || fs[2] != remote {
			continue
		}
		uid, err := strconv.Atoi(fs[7])
		return uid, err == nil
	}
	return 0, false
}
