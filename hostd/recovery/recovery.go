// Package recovery repairs what an interrupted virtkeep left on the host:
// it thaws guests whose freezer died (the freeze journal names them), ends
// the libvirt backup job and scratch files of a backup whose process was
// killed, and undoes the file-level mounts recorded in state_dir. The
// daemon runs it at start, and the thaw every second.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/mount"
	"github.com/virtkeep/virtkeep/hostd/statedir"
)

// Host is what is repaired: one libvirt connection and a state directory.
type Host struct {
	Conn  *libvirt.Connect
	State statedir.Dir
	Log   *slog.Logger
}

func (h Host) log() *slog.Logger {
	if h.Log != nil {
		return h.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Thaw thaws every guest a killed process left frozen; a guest whose
// freezer still runs is left to it, and the record of a domain that no
// longer exists is retired.
func (h Host) Thaw(ctx context.Context) error {
	return guestagent.Recover(ctx, backup.FreezeJournal(h.State), func(in guestagent.Intent) (guestagent.Agent, error) {
		switch in.Kind {
		case "socket":
			return &guestagent.SocketAgent{Path: in.Target}, nil
		case "libvirt":
		default:
			return nil, fmt.Errorf("intent of unknown kind %q", in.Kind)
		}
		dom, err := h.Conn.LookupDomainByUUIDString(in.Target)
		if errors.Is(err, libvirt.ERR_NO_DOMAIN) {
			return nil, fmt.Errorf("domain %s (%s): %w", in.Name, in.Target, guestagent.ErrGone)
		}
		if err != nil {
			return nil, err
		}
		return guestagent.LibvirtAgent{Dom: dom}, nil
	}, h.log())
}

// EndStaleJob ends the libvirt backup job a killed backup of domain uuid
// left, and its scratch files.
func (h Host) EndStaleJob(ctx context.Context, uuid string) error {
	return (&backup.Driver{Conn: h.Conn, State: h.State, Log: h.Log}).EndStaleJob(ctx, uuid)
}

// Mounts undoes every mount recorded in state_dir/mounts.
func (h Host) Mounts(ctx context.Context) error {
	return (&mount.Mounter{State: h.State, Log: h.Log}).CleanupMounts(ctx)
}
