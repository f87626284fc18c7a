package vm

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestGuestBootsAndAnswers(t *testing.T) {
	env := Libvirt(t)
	start := time.Now()
	g := env.NewGuest(t, GuestSpec{Files: map[string]string{"hello.txt": "hello from the host\n"}})
	t.Logf("guest agent ready %v after define", time.Since(start).Round(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := g.Exec(ctx, "cat /data/hello.txt; grep /data /proc/mounts")
	if err != nil || res.ExitCode != 0 || !strings.Contains(res.Stdout, "hello from the host") || !strings.Contains(res.Stdout, "ext4") {
		t.Fatalf("exec: %+v %v", res, err)
	}
	if err := g.StartWriter(ctx, "/data/log"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	res, err = g.Exec(ctx, "tail -n 1 /data/log")
	if err != nil || !strings.HasPrefix(res.Stdout, "record ") {
		t.Fatalf("writer: %+v %v", res, err)
	}
}
