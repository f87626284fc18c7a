// Package client implements api.Service over HTTP on virtkeepd's unix
// socket (docs/API.md). Errors come back as *api.Error with the daemon's
// code; job progress and logs are read as NDJSON streams.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// ErrNoDaemon is returned by Dial when nothing listens on the socket.
var ErrNoDaemon = errors.New("virtkeepd is not running")

// maxLine bounds one answer or stream line from the daemon.
const maxLine = 16 << 20

// Client is an api.Service on the daemon's socket.
type Client struct {
	socket string
	hc     *http.Client
}

var _ api.Service = (*Client)(nil)

// New returns a client of the daemon at socket; it does not connect.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 4,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Dial returns a client when a daemon answers on socket, and ErrNoDaemon
// when none listens there (no socket, or a socket left by a dead one).
func Dial(ctx context.Context, socket string) (*Client, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", socket, ErrNoDaemon)
	}
	c.Close()
	return New(socket), nil
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	resp, err := c.send(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxLine)).Decode(out); err != nil {
		return fmt.Errorf("virtkeepd answer to %s %s: %w", method, path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, query url.Values, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := "http://virtkeepd/" + api.Version + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, api.WithCode(api.CodeUnavailable, fmt.Errorf("virtkeepd (%s): %w", c.socket, err))
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e api.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxLine))
		if json.Unmarshal(b, &e) != nil || e.Code == "" {
			return nil, fmt.Errorf("virtkeepd: %s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		return nil, &e
	}
	return resp, nil
}

// lines reads an NDJSON stream into fn; a last {"error": ...} line is the
// stream's error.
func lines[T any](resp *http.Response, fn func(T) error) error {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		var tail struct {
			Error *api.Error `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &tail) == nil && tail.Error != nil && tail.Error.Code != "" {
			return tail.Error
		}
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return fmt.Errorf("virtkeepd stream: %w", err)
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	return sc.Err()
}

func (c *Client) Version(ctx context.Context) (v api.VersionInfo, err error) {
	return v, c.do(ctx, "GET", "/version", nil, nil, &v)
}

func (c *Client) Points(ctx context.Context, r api.ListRequest) (out []api.Point, err error) {
	q := url.Values{}
	setIf(q, "domain", r.Domain)
	setIf(q, "target", r.Target)
	return out, c.do(ctx, "GET", "/points", q, nil, &out)
}

func (c *Client) Point(ctx context.Context, r api.PointRequest) (p api.Point, err error) {
	q := url.Values{}
	setIf(q, "target", r.Target)
	return p, c.do(ctx, "GET", "/points/"+url.PathEscape(r.Point), q, nil, &p)
}

func (c *Client) Backup(ctx context.Context, r api.BackupRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/backups", nil, r, &j)
}

func (c *Client) Restore(ctx context.Context, r api.RestoreRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/restores", nil, r, &j)
}

func (c *Client) Export(ctx context.Context, r api.ExportRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/exports", nil, r, &j)
}

func (c *Client) Verify(ctx context.Context, r api.VerifyRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/verifies", nil, r, &j)
}

func (c *Client) RebuildCatalog(ctx context.Context, r api.RebuildRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/catalog/rebuild", nil, r, &j)
}

func (c *Client) Jobs(ctx context.Context, r api.JobsRequest) (out []api.Job, err error) {
	q := url.Values{}
	if r.All {
		q.Set("all", "true")
	}
	setIf(q, "domain", r.Domain)
	if !r.Since.IsZero() {
		q.Set("since", r.Since.Format(time.RFC3339Nano))
	}
	return out, c.do(ctx, "GET", "/jobs", q, nil, &out)
}

func (c *Client) Job(ctx context.Context, id string) (j api.Job, err error) {
	return j, c.do(ctx, "GET", "/jobs/"+url.PathEscape(id), nil, nil, &j)
}

func (c *Client) CancelJob(ctx context.Context, id string) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/jobs/"+url.PathEscape(id)+"/cancel", nil, nil, &j)
}

func (c *Client) Watch(ctx context.Context, id string, fn func(api.Job) error) error {
	resp, err := c.send(ctx, "GET", "/jobs/"+url.PathEscape(id)+"/watch", nil, nil)
	if err != nil {
		return err
	}
	return lines(resp, fn)
}

func (c *Client) Log(ctx context.Context, id string, follow bool, fn func(api.LogLine) error) error {
	q := url.Values{}
	if follow {
		q.Set("follow", "true")
	}
	resp, err := c.send(ctx, "GET", "/jobs/"+url.PathEscape(id)+"/log", q, nil)
	if err != nil {
		return err
	}
	return lines(resp, fn)
}

func (c *Client) Mount(ctx context.Context, r api.MountRequest) (s api.Session, err error) {
	return s, c.do(ctx, "POST", "/mounts", nil, r, &s)
}

func (c *Client) Serve(ctx context.Context, r api.ServeRequest) (s api.Session, err error) {
	return s, c.do(ctx, "POST", "/serves", nil, r, &s)
}

func (c *Client) Boot(ctx context.Context, r api.BootRequest) (s api.Session, err error) {
	return s, c.do(ctx, "POST", "/boots", nil, r, &s)
}

func (c *Client) Sessions(ctx context.Context) (out []api.Session, err error) {
	return out, c.do(ctx, "GET", "/sessions", nil, nil, &out)
}

func (c *Client) EndSession(ctx context.Context, r api.EndSessionRequest) error {
	return c.do(ctx, "POST", "/sessions/end", nil, r, nil)
}

func (c *Client) Policies(ctx context.Context) (out []api.PolicyInfo, err error) {
	return out, c.do(ctx, "GET", "/policies", nil, nil, &out)
}

func (c *Client) RunPolicy(ctx context.Context, r api.RunRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/runs", nil, r, &j)
}

func (c *Client) Prune(ctx context.Context, r api.PruneRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/prunes", nil, r, &j)
}

func (c *Client) Protect(ctx context.Context, r api.ProtectRequest) error {
	return c.do(ctx, "POST", "/protect", nil, r, nil)
}

func (c *Client) Copy(ctx context.Context, r api.CopyRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/copies", nil, r, &j)
}

func (c *Client) GC(ctx context.Context, r api.GCRequest) (j api.Job, err error) {
	return j, c.do(ctx, "POST", "/gcs", nil, r, &j)
}

func setIf(q url.Values, k, v string) {
	if v != "" {
		q.Set(k, v)
	}
}
