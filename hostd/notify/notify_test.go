package notify

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/target/secret"
)

func TestWebhookRetriesAndMail(t *testing.T) {
	var tries atomic.Int32
	got := make(chan Message, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			t.Errorf("authorization %q", r.Header.Get("Authorization"))
		}
		if tries.Add(1) < 3 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		var m Message
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			t.Error(err)
		}
		got <- m
	}))
	defer srv.Close()
	dir := t.TempDir()
	sendmail := filepath.Join(dir, "sendmail")
	os.WriteFile(sendmail, []byte("#!/bin/sh\necho \"$@\" > "+dir+"/args\ncat > "+dir+"/mail\n"), 0o755)
	n := New(Config{Host: "kvm1", Backoff: 10 * time.Millisecond,
		Webhook: Webhook{URL: srv.URL, Token: secret.Value("s3cret")},
		Mail:    Mail{To: []string{"ops@example.org"}, Sendmail: sendmail},
		Tail: func(context.Context, string) []api.LogLine {
			return []api.LogLine{{Level: "ERROR", Message: "domain not backed up", Attrs: map[string]string{"domain": "web1"}}}
		}})
	n.Ended(api.Job{ID: "j1", Kind: api.KindBackup, Domain: "web1", State: api.Succeeded})           // success: not asked for
	n.Ended(api.Job{ID: "j2", Kind: api.KindBackup, Domain: "web1", State: api.Failed, Parent: "p"}) // inside a run
	n.Ended(api.Job{ID: "j3", Kind: api.KindPolicy, Policy: "nightly", State: api.Failed, Error: "1 of 1 domains failed: web1: gone\nSubject: x"})
	n.Wait()
	if len(got) != 1 || tries.Load() != 3 {
		t.Fatalf("%d messages after %d tries, want 1 after 3", len(got), tries.Load())
	}
	m := <-got
	if m.Event != "failure" || m.Job.ID != "j3" || len(m.Log) != 1 || !strings.Contains(m.Summary, "run of policy nightly failed") {
		t.Fatalf("message %+v", m)
	}
	mail, _ := os.ReadFile(filepath.Join(dir, "mail"))
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	head, _, _ := strings.Cut(string(mail), "\n\n")
	if strings.TrimSpace(string(args)) != "-t -oi" || !strings.Contains(head, "To: ops@example.org\n") ||
		strings.Contains(head, "\nSubject: x") || !strings.Contains(string(mail), `domain="web1"`) {
		t.Fatalf("mail %s with %s", mail, args)
	}
}

// TestNotificationBounded: a hook that printed 12 MiB with escape
// sequences makes a notification of bounded size with no control
// character but newline and tab.
func TestNotificationBounded(t *testing.T) {
	junk := strings.Repeat("\x1b[2J\x1b]0;owned\x07A", 1<<20)
	var lines []api.LogLine
	for i := range 500 {
		lines = append(lines, api.LogLine{Seq: int64(i), Message: "hook ran", Attrs: map[string]string{"stdout": junk}})
	}
	m := bounded(Message{Summary: "backup failed: " + junk, Job: api.Job{Error: junk}, Log: lines})
	b, _ := json.Marshal(m)
	if len(b) > 256<<10 {
		t.Fatalf("notification of %d bytes", len(b))
	}
	for _, s := range []string{m.Summary, m.Job.Error, m.Log[0].Attrs["stdout"]} {
		if strings.ContainsAny(s, "\x1b\x07") {
			t.Fatalf("control characters kept: %q", s[:40])
		}
	}
	if len(m.Log) == 0 || m.Log[len(m.Log)-1].Seq != 499 {
		t.Fatalf("the last log lines are not kept: %d lines", len(m.Log))
	}
}
