package systemd

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier tells the service manager how the daemon is doing. Outside
// systemd (no NOTIFY_SOCKET) every call does nothing.
type Notifier struct{}

func (Notifier) send(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("sd_notify %q: %w", state, err)
	}
	return nil
}

// Ready reports that start-up (recovery included) is done.
func (n Notifier) Ready() error { return n.send(daemon.SdNotifyReady) }

// Stopping reports that the daemon is shutting down.
func (n Notifier) Stopping() error { return n.send(daemon.SdNotifyStopping) }

// Status sets the one-line status `systemctl status` shows.
func (n Notifier) Status(s string) error { return n.send("STATUS=" + s) }

// Watchdog pings the service manager at half the interval it asked for
// (WatchdogSec=) until ctx ends; alive is asked before each ping, so a
// daemon whose main loop is stuck stops pinging and gets restarted. It
// returns at once when no watchdog is configured.
func (n Notifier) Watchdog(ctx context.Context, alive func() bool) error {
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	if every == 0 {
		return nil
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if alive == nil || alive() {
				if err := n.send(daemon.SdNotifyWatchdog); err != nil {
					return err
				}
			}
		}
	}
}
