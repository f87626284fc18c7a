package testenv

import (
	"net"
	"sync"
	"testing"
	"time"
)

// DelayProxy forwards TCP connections on 127.0.0.1 to a server, holding
// every byte for Delay in each direction (a round trip costs 2·Delay) at
// full bandwidth: the kernel here has no netem.
type DelayProxy struct {
	Addr  string // host:port to dial instead of the server's
	Delay time.Duration

	target string
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

// NewDelayProxy starts a proxy to target (host:port); the test's cleanup
// stops it and closes every connection.
func NewDelayProxy(t testing.TB, target string, delay time.Duration) *DelayProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &DelayProxy{Addr: ln.Addr().String(), Delay: delay, target: target, ln: ln}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *DelayProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(3)
		var both sync.WaitGroup
		both.Add(2)
		go func() { defer both.Done(); p.pipe(s, c) }()
		go func() { defer both.Done(); p.pipe(c, s) }()
		go func() { // both directions done: give the descriptors back
			defer p.wg.Done()
			both.Wait()
			c.Close()
			s.Close()
		}()
	}
}

type held struct {
	data []byte
	at   time.Time
}

// pipe copies from src to dst, each piece Delay after it was read.
func (p *DelayProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	q := make(chan held, 4096)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- held{buf[:n], time.Now().Add(p.Delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for h := range q {
		time.Sleep(time.Until(h.at))
		if _, err := dst.Write(h.data); err != nil {
			break
		}
	}
	for range q { // drain after a write error
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		_ = dst.Close()
	}
}

func (p *DelayProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// Cut closes every connection open now, in both directions, as a reset by
// the network or a server that fails would; new connections are served.
func (p *DelayProxy) Cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	n := len(p.conns) / 2
	p.conns = nil
	return n
}
