// Package notify tells people about jobs that ended: a JSON webhook
// (retried with backoff) and mail through the host's sendmail, on failure
// by default and on success when asked, with the job's summary and its
// last log lines.
package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/target/secret"
)

// Events.
const (
	OnFailure = "failure"
	OnSuccess = "success"
)

// Webhook posts to URL.
type Webhook struct {
	URL     string
	On      []string // default failure
	Retries int      // after the first try (default 3)
	Token   secret.Value
	Timeout time.Duration // per try (default 10 s)
}

// Mail sends through Sendmail (default /usr/sbin/sendmail).
type Mail struct {
	To       []string
	From     string
	Sendmail string
	On       []string
}

// Config is who is told.
type Config struct {
	Webhook Webhook
	Mail    Mail
	Host    string
	Log     *slog.Logger
	// Tail returns the job's last log lines.
	Tail func(ctx context.Context, job string) []api.LogLine
	// Backoff is the wait before the first retry; it doubles (default 2 s).
	Backoff time.Duration
}

// Message is the webhook's JSON body.
type Message struct {
	Event   string        `json:"event"` // failure, success
	Host    string        `json:"host"`
	Summary string        `json:"summary"`
	Job     api.Job       `json:"job"`
	Log     []api.LogLine `json:"log"`
}

// Notifier sends notifications in the background.
type Notifier struct {
	cfg Config
	hc  *http.Client
	wg  sync.WaitGroup
}

// New returns a notifier for c.
func New(c Config) *Notifier {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Backoff <= 0 {
		c.Backoff = 2 * time.Second
	}
	if c.Webhook.Timeout <= 0 {
		c.Webhook.Timeout = 10 * time.Second
	}
	if c.Webhook.Retries == 0 {
		c.Webhook.Retries = 3
	}
	if c.Mail.Sendmail == "" {
		c.Mail.Sendmail = "/usr/sbin/sendmail"
	}
	return &Notifier{cfg: c, hc: &http.Client{Timeout: c.Webhook.Timeout}}
}

// wants reports whether on asks for event (failure by default).
func wants(on []string, event string) bool {
	if len(on) == 0 {
		return event == OnFailure
	}
	return slices.Contains(on, event)
}

// Ended is told of every job that ended; it tells of top-level jobs (a
// policy run's own jobs are in the run's summary) without blocking.
func (n *Notifier) Ended(j api.Job) {
	if n == nil || j.Parent != "" || j.State == api.Cancelled {
		return
	}
	event := OnFailure
	if j.State == api.Succeeded {
		event = OnSuccess
	}
	hook := n.cfg.Webhook.URL != "" && wants(n.cfg.Webhook.On, event)
	mail := len(n.cfg.Mail.To) > 0 && wants(n.cfg.Mail.On, event)
	if !hook && !mail {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		m := Message{Event: event, Host: n.cfg.Host, Summary: Summary(j), Job: j}
		if n.cfg.Tail != nil {
			m.Log = n.cfg.Tail(ctx, j.ID)
		}
		m = bounded(m)
		if hook {
			if err := n.post(ctx, m); err != nil {
				n.cfg.Log.Error("webhook not delivered", "job", j.ID, "err", err)
			}
		}
		if mail {
			if err := n.mail(ctx, m); err != nil {
				n.cfg.Log.Error("mail not sent", "job", j.ID, "err", err)
			}
		}
	}()
}

const (
	// maxField bounds a summary, an error or a log line in a notification.
	maxField = 4 << 10
	// maxLines and maxLog bound the log lines a notification carries.
	maxLines = 50
	maxLog   = 128 << 10
)

// bounded makes m fit a mail or a webhook: its texts may carry what a
// guest chose (a hook's output, an error naming it), so each is made
// printable and cut at maxField bytes, and of the log the last lines, at
// most maxLines and maxLog bytes, are kept.
func bounded(m Message) Message {
	clip := func(s string) string { return clipText(s, maxField) }
	m.Summary, m.Job.Error = clip(m.Summary), clip(m.Job.Error)
	var kept []api.LogLine
	size := 0
	for i := len(m.Log) - 1; i >= 0 && len(kept) < maxLines; i-- {
		l := m.Log[i]
		l.Message = clip(l.Message)
		n := len(l.Message)
		attrs := make(map[string]string, len(l.Attrs))
		for k, v := range l.Attrs {
			k, v = clip(k), clip(v)
			attrs[k] = v
			n += len(k) + len(v)
		}
		if size += n; size > maxLog {
			break
		}
		l.Attrs = attrs
		kept = append(kept, l)
	}
	slices.Reverse(kept)
	m.Log = kept
	return m
}

// Wait waits for the notifications under way (at shutdown).
func (n *Notifier) Wait() {
	if n != nil {
		n.wg.Wait()
	}
}

// Summary is one line about j.
func Summary(j api.Job) string {
	what := j.Kind
	switch {
	case j.Kind == api.KindPolicy:
		what = "run of policy " + j.Policy
	case j.Policy != "":
		what += " for policy " + j.Policy
	}
	if j.Domain != "" {
		what += " of " + j.Domain
	}
	if j.Target != "" {
		what += " into " + j.Target
	}
	s := fmt.Sprintf("%s %s", what, j.State)
	if j.Error != "" {
		s += ": " + j.Error
	}
	return s
}

func (n *Notifier) post(ctx context.Context, m Message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var last error
	for try := 0; try <= n.cfg.Webhook.Retries; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(n.cfg.Backoff << (try - 1)):
			}
		}
		if last = n.postOnce(ctx, body); last == nil {
			return nil
		}
		n.cfg.Log.Warn("webhook failed: retrying", "try", try+1, "err", last)
	}
	return last
}

func (n *Notifier) postOnce(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.cfg.Webhook.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "virtkeepd")
	if !n.cfg.Webhook.Token.Empty() {
		req.Header.Set("Authorization", "Bearer "+n.cfg.Webhook.Token.Reveal())
	}
	resp, err := n.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", n.cfg.Webhook.URL, resp.Status)
	}
	return nil
}

// header drops what would end a mail header line.
func header(s string) string { return controls(s, "") }

// controls replaces the control characters of s but those in keep with a
// space, and invalid UTF-8 with U+FFFD: what a guest or a repository put
// in a text never reaches a mail header, a terminal or a mail reader as an
// escape sequence or a new header line.
func controls(s, keep string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) && !strings.ContainsRune(keep, r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

// clipText is s with controls replaced (newlines and tabs kept), cut at
// max bytes with a note of how much was left out.
func clipText(s string, max int) string {
	if len(s) <= max {
		return controls(s, "\n\t")
	}
	return controls(strings.ToValidUTF8(s[:max], ""), "\n\t") + fmt.Sprintf(" [%d more bytes not kept]", len(s)-max)
}

func (n *Notifier) mail(ctx context.Context, m Message) error {
	from := n.cfg.Mail.From
	if from == "" {
		from = "virtkeep@" + n.cfg.Host
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\nTo: %s\nSubject: %s\nContent-Type: text/plain; charset=utf-8\nAuto-Submitted: auto-generated\n\n",
		header(from), header(strings.Join(n.cfg.Mail.To, ", ")), header("[virtkeep "+n.cfg.Host+"] "+m.Summary))
	fmt.Fprintf(&b, "%s\n\nJob %s (%s), started %s, ended %s.\n\nLast log lines:\n",
		m.Summary, m.Job.ID, m.Job.Kind, m.Job.Started.Format(time.RFC3339), m.Job.Ended.Format(time.RFC3339))
	for _, l := range m.Log {
		fmt.Fprintf(&b, "%s %s %s", l.Time.Format(time.TimeOnly), l.Level, l.Message)
		for _, k := range slices.Sorted(maps.Keys(l.Attrs)) {
			fmt.Fprintf(&b, " %s=%q", k, l.Attrs[k])
		}
		b.WriteByte('\n')
	}
	cmd := exec.CommandContext(ctx, n.cfg.Mail.Sendmail, "-t", "-oi")
	cmd.Stdin = &b
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w: %s", n.cfg.Mail.Sendmail, err, strings.TrimSpace(out.String()))
		}
		return err
	}
	return nil
}
