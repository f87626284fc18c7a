package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/hostd/api"
)

func newServeCmd(a *app) *cobra.Command {
	var r api.ServeRequest
	var detach bool
	cmd := &cobra.Command{
		Use:   "serve POINT [--disk NAME] [--socket PATH | --listen 127.0.0.1:10809] [--detach]",
		Short: "Serve a point's disks read-only over NBD; prints the URIs; runs until interrupted",
		Long: `Serve starts an NBD server of the point (each disk under its name, and
each logical volume found on it as DISK/VG/LV) and prints one URI per
export. It serves until interrupted; with --detach, through virtkeepd, it
returns at once and the daemon serves until virtkeep sessions end ID.`,
		Args: exactArgs(1, "POINT"),
		RunE: a.withService(reads, func(cmd *cobra.Command, args []string) error {
			if r.Listen != "" {
				if err := loopbackOnly(r.Listen); err != nil {
					return err
				}
			}
			if err := abs(&r.Socket); err != nil {
				return err
			}
			if detach && a.inproc != nil {
				return usageErr("--detach needs virtkeepd: in process the server ends with this command")
			}
			r.Point = args[0]
			ctx := cmd.Context()
			s, err := a.svc.Serve(ctx, r)
			if err != nil {
				return err
			}
			if a.json {
				uri := ""
				if len(s.URIs) > 0 {
					uri = s.URIs[0]
				}
				_ = a.printJSON(map[string]any{"uri": uri, "uris": s.URIs, "exports": s.Exports, "point": s.Point, "session": s.ID})
			} else {
				for _, u := range s.URIs {
					fmt.Fprintln(a.out, u)
				}
			}
			if detach {
				return nil
			}
			if a.inproc != nil {
				a.inproc.ReleaseHostLock()
			}
			<-ctx.Done()
			ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			err = a.svc.EndSession(ectx, api.EndSessionRequest{ID: s.ID})
			if a.inproc != nil {
				// The server ends with this process anyway; the server of a
				// mount made in process has no session of its own.
				return nil
			}
			return err
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.Target, "target", "", "only look in this target")
	f.StringVar(&r.Disk, "disk", "", "serve only this disk (default: every disk, export names = disk names)")
	f.StringVar(&r.Socket, "socket", "", "unix socket to listen on")
	f.StringVar(&r.Listen, "listen", "", "loopback TCP address to listen on instead (NBD has no TLS here yet)")
	f.BoolVar(&detach, "detach", false, "leave the server to virtkeepd and return")
	return cmd
}

// loopbackOnly refuses a --listen address off this host before anything
// is looked up (the service checks again).
func loopbackOnly(addr string) error {
	host := addr
	if i := strings.LastIndex(addr, ":"); i >= 0 {
		host = strings.Trim(addr[:i], "[]")
	}
	switch {
	case host == "localhost", host == "::1", strings.HasPrefix(host, "127."):
		return nil
	}
	return usageErr("--listen %s: only loopback addresses (127.0.0.1, [::1]): NBD is served without TLS or authentication", addr)
}

func newMountCmd(a *app) *cobra.Command {
	var r api.MountRequest
	cmd := &cobra.Command{
		Use:   "mount POINT DIR [--disk NAME]",
		Short: "Mount a point's filesystems read-only under DIR/<partition>",
		Args:  exactArgs(2, "POINT DIR"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			r.Point, r.Dir = args[0], args[1]
			if err := abs(&r.Dir); err != nil {
				return err
			}
			s, err := a.svc.Mount(cmd.Context(), r)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(s)
			}
			for _, fs := range s.Mounts {
				fmt.Fprintf(a.out, "%s (%s)\n", fs.Path, fs.Type)
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&r.Target, "target", "", "only look in this target")
	cmd.Flags().StringVar(&r.Disk, "disk", "", "disk to mount (default: the first)")
	return cmd
}

func newUmountCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "umount DIR",
		Short: "Undo a mount: filesystems, devices, server",
		Args:  exactArgs(1, "DIR"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if err := abs(&dir); err != nil {
				return err
			}
			return a.svc.EndSession(cmd.Context(), api.EndSessionRequest{Dir: dir})
		}),
	}
}

func newBootCmd(a *app) *cobra.Command {
	var r api.BootRequest
	cmd := &cobra.Command{
		Use:   "boot POINT --as NAME [--migrate]",
		Short: "Start a new domain at once from a point (instant recovery)",
		Args:  exactArgs(1, "POINT"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			if r.Name == "" {
				return usageErr("boot needs --as NAME")
			}
			if err := abs(&r.Dir); err != nil {
				return err
			}
			r.Point = args[0]
			s, err := a.svc.Boot(cmd.Context(), r)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.errw, "domain %s is running from point %s\n", s.Domain, s.Point)
			if s.Migrated {
				fmt.Fprintf(a.errw, "disks of %s moved to %s; the backup is no longer needed\n", s.Domain, s.Dir)
			}
			if a.json {
				return a.printJSON(map[string]any{"domain": s.Domain, "uuid": s.UUID, "dir": s.Dir, "migrated": s.Migrated, "session": s.ID})
			}
			fmt.Fprintln(a.out, s.UUID)
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.Target, "target", "", "only look in this target")
	f.StringVar(&r.Name, "as", "", "name of the new domain")
	f.StringVar(&r.Dir, "dir", "", "where overlays (and migrated disks) go")
	f.BoolVar(&r.Migrate, "migrate", false, "then move the disks to local files and drop the backup dependency")
	f.BoolVar(&r.Strict, "strict", false, "refuse a saved definition with parts a boot drops (host devices, passthrough, ...)")
	return cmd
}

func newSessionsCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sessions",
		Short: "List mounts, NBD servers and booted domains, and who holds them",
		Args:  cobra.NoArgs,
		RunE: a.withService(reads, func(cmd *cobra.Command, _ []string) error {
			ss, err := a.svc.Sessions(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ss)
			}
			tw := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tPOINT\tTARGET\tHOLDER\tWHERE")
			for _, s := range ss {
				where := s.Dir
				if s.Kind == api.SessionServe {
					where = strings.Join(s.URIs, " ")
				}
				if s.Kind == api.SessionBoot {
					where = s.Domain + " " + s.UUID
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Kind, s.Point, s.Target, s.Holder, where)
			}
			return tw.Flush()
		}),
	}
	end := &cobra.Command{
		Use:   "end ID",
		Short: "End a session: unmount, stop the server, or destroy the booted domain",
		Args:  exactArgs(1, "ID"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			return a.svc.EndSession(cmd.Context(), api.EndSessionRequest{ID: args[0]})
		}),
	}
	cmd.AddCommand(end)
	return cmd
}
