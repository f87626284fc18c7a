package nbd

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Reader reads an export's bytes: a Client or a Pool.
type Reader interface {
	Read(ctx context.Context, p []byte, off int64) error
}

// FetchOptions tune Fetch.
type FetchOptions struct {
	PieceSize int // bytes per read request (default 2 MiB)
	InFlight  int // reads in flight at once (default 16)
}

// Fetch reads the ranges (each an Extent; Flags are ignored) in pieces of at
// most PieceSize bytes with InFlight reads in flight, and calls fn for each
// piece in order of the ranges, on the caller's goroutine. data is only
// valid until fn returns. Memory is bounded by PieceSize × InFlight.
func Fetch(ctx context.Context, r Reader, ranges []Extent, o FetchOptions, fn func(off int64, data []byte) error) error {
	size := o.PieceSize
	if size <= 0 {
		size = 2 << 20
	}
	n := o.InFlight
	if n <= 0 {
		n = 16
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// next yields the pieces in order.
	ri, at := 0, int64(-1)
	next := func() (int64, int, bool) {
		for ri < len(ranges) {
			e := ranges[ri]
			if at < 0 {
				at = e.Off
			}
			if at < e.Off+e.Len {
				l := min(int64(size), e.Off+e.Len-at)
				off := at
				at += l
				return off, int(l), true
			}
			ri, at = ri+1, -1
		}
		return 0, 0, false
	}
	type slot struct {
		buf  []byte
		off  int64
		n    int
		busy bool
		done chan error
	}
	slots := make([]slot, n)
	start := func(s *slot) bool {
		off, l, ok := next()
		if !ok {
			s.busy = false
			return false
		}
		if s.buf == nil {
			s.buf = make([]byte, size)
			s.done = make(chan error, 1)
		}
		s.off, s.n, s.busy = off, l, true
		go func() { s.done <- r.Read(ctx, s.buf[:l], off) }()
		return true
	}
	for i := range slots {
		if !start(&slots[i]) {
			break
		}
	}
	var err error
	for k := 0; ; k = (k + 1) % n {
		s := &slots[k]
		if !s.busy {
			break
		}
		if rerr := <-s.done; rerr != nil {
			s.busy = false
			err = fmt.Errorf("nbd: fetch [%d, +%d): %w", s.off, s.n, rerr)
			break
		}
		if ferr := fn(s.off, s.buf[:s.n]); ferr != nil {
			s.busy = false
			err = ferr
			break
		}
		start(s)
	}
	if err != nil {
		cancel()
		for i := range slots { // no read may outlive Fetch
			if slots[i].busy {
				<-slots[i].done
			}
		}
	}
	return err
}

// Pool spreads reads over several connections to one export, for servers
// that allow it (multi-conn, or any read-only export). It is safe for
// concurrent use.
type Pool struct {
	clients []*Client
	next    atomic.Uint64

	network, addr string
	opts          Options

	mu      sync.Mutex
	onClose []func()
}

// DialPool opens up to n connections to the export with options o. It opens
// one when the server does not allow several.
func DialPool(ctx context.Context, n int, network, addr string, o Options) (*Pool, error) {
	first, err := Dial(ctx, network, addr, o)
	if err != nil {
		return nil, err
	}
	p := &Pool{clients: []*Client{first}, network: network, addr: addr, opts: o}
	if first.info.Flags&(FlagCanMultiConn|FlagReadOnly) == 0 {
		return p, nil
	}
	for len(p.clients) < n {
		c, err := Dial(ctx, network, addr, o)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.clients = append(p.clients, c)
	}
	return p, nil
}

// DialContexts opens one more connection to the pool's export, asking for
// the meta contexts given instead of the pool's: a block-status query
// makes the server compute every context its connection negotiated, so
// a walk of a dirty bitmap on a connection of its own does not make QEMU
// map the image's allocation over the whole disk too. The caller closes
// it.
func (p *Pool) DialContexts(ctx context.Context, contexts []string) (*Client, error) {
	o := p.opts
	o.MetaContexts = contexts
	return Dial(ctx, p.network, p.addr, o)
}

// Client returns the pool's first connection, for block status and info.
func (p *Pool) Client() *Client { return p.clients[0] }

// Conns is the number of connections.
func (p *Pool) Conns() int { return len(p.clients) }

// Read reads on the next connection in turn.
func (p *Pool) Read(ctx context.Context, b []byte, off int64) error {
	c := p.clients[p.next.Add(1)%uint64(len(p.clients))]
	return c.Read(ctx, b, off)
}

// Close closes every connection.
func (p *Pool) Close() error {
	var wg sync.WaitGroup
	for _, c := range p.clients {
		wg.Add(1)
		go func() { defer wg.Done(); c.Close() }()
	}
	wg.Wait()
	p.mu.Lock()
	fns := p.onClose
	p.onClose = nil
	p.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
	return nil
}

// OnClose registers fn to run after the pool's connections are closed (to
// stop the server process that serves them, say).
func (p *Pool) OnClose(fn func()) {
	p.mu.Lock()
	p.onClose = append(p.onClose, fn)
	p.mu.Unlock()
}
