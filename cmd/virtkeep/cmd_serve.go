package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/hostd/engine"
	"github.com/virtkeep/virtkeep/nbd"
)

func newServeCmd(a *app) *cobra.Command {
	var targetName, disk, socket, listen string
	cmd := &cobra.Command{
		Use:   "serve POINT [--disk NAME] [--socket PATH | --listen 127.0.0.1:10809]",
		Short: "Serve a point's disks read-only over NBD; prints the URI; runs until interrupted",
		Args:  exactArgs(1, "POINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			if listen != "" {
				if err := loopbackOnly(listen); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			m, tp, err := a.resolvePoint(ctx, args[0], targetName)
			if err != nil {
				return err
			}
			srv := &nbd.Server{Logger: a.log}
			srv.Exports, err = engine.PointExports(ctx, tp.repo, m, disk, a.log)
			if err != nil {
				return err
			}
			if len(srv.Exports) == 0 {
				return notFoundErr("point %s has no disk %q", m.ID, disk)
			}
			var ln net.Listener
			var uriOf func(name string) string
			if listen != "" {
				if ln, err = net.Listen("tcp", listen); err != nil {
					return err
				}
				addr := ln.Addr().String()
				uriOf = func(name string) string { return fmt.Sprintf("nbd://%s/%s", addr, name) }
			} else {
				if socket == "" {
					run, err := (&engine.Engine{StateDir: a.cfg.StateDir}).RunDir()
					if err != nil {
						return err
					}
					dir := filepath.Join(run, fmt.Sprintf("serve-%d", os.Getpid()))
					if err := os.Mkdir(dir, 0o700); err != nil {
						return err
					}
					defer os.RemoveAll(dir)
					if err := engine.ShareWithQEMU(dir, 0o750); err != nil {
						return err
					}
					socket = filepath.Join(dir, "nbd.sock")
				}
				if ln, err = net.Listen("unix", socket); err != nil {
					return err
				}
				defer os.Remove(socket)
				// QEMU (instant recovery) may connect; other local users
				// must not read the decrypted disk.
				if err := engine.ShareWithQEMU(socket, 0o660); err != nil {
					return err
				}
				uriOf = func(name string) string { return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, socket) }
			}
			// One URI per export, the disk first; logical volumes found on
			// it follow as DISK/VG/LV.
			var uris, names []string
			for _, x := range srv.Exports {
				uris = append(uris, uriOf(x.Name))
				names = append(names, x.Name)
			}
			if a.json {
				_ = a.printJSON(map[string]any{"uri": uris[0], "uris": uris, "exports": names, "point": m.ID})
			} else {
				for _, u := range uris {
					fmt.Fprintln(a.out, u)
				}
			}
			go func() { <-ctx.Done(); srv.Close() }()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&targetName, "target", "", "only look in this target")
	f.StringVar(&disk, "disk", "", "serve only this disk (default: every disk, export names = disk names)")
	f.StringVar(&socket, "socket", "", "unix socket to listen on")
	f.StringVar(&listen, "listen", "", "loopback TCP address to listen on instead (NBD has no TLS here yet)")
	return cmd
}

func newMountCmd(a *app) *cobra.Command {
	var targetName, disk string
	cmd := &cobra.Command{
		Use:   "mount POINT DIR [--disk NAME]",
		Short: "Mount a point's filesystems read-only under DIR/<partition>",
		Args:  exactArgs(2, "POINT DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			ctx := cmd.Context()
			m, _, err := a.resolvePoint(ctx, args[0], targetName)
			if err != nil {
				return err
			}
			if disk == "" {
				disk = m.Disks[0].Name
			}
			if _, err := m.Disk(disk); err != nil {
				return notFoundErr("%v", err)
			}
			argv, err := a.serveArgv(m.ID, disk)
			if err != nil {
				return err
			}
			e, done, err := a.engine()
			if err != nil {
				return err
			}
			defer done()
			st, err := e.Mount(ctx, engine.MountRequest{Point: m.ID, Disk: disk, Dir: args[1], Serve: argv})
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(st)
			}
			for _, fs := range st.Mounts {
				fmt.Fprintf(a.out, "%s (%s)\n", fs.Path, fs.Type)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&targetName, "target", "", "only look in this target")
	cmd.Flags().StringVar(&disk, "disk", "", "disk to mount (default: the first)")
	return cmd
}

func newUmountCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "umount DIR",
		Short: "Undo a mount: filesystems, devices, server",
		Args:  exactArgs(1, "DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			e := &engine.Engine{StateDir: a.cfg.StateDir, Log: a.log}
			return e.Umount(cmd.Context(), args[0])
		},
	}
}

func newBootCmd(a *app) *cobra.Command {
	var targetName, as, dir string
	var migrate, strict bool
	cmd := &cobra.Command{
		Use:   "boot POINT --as NAME [--migrate]",
		Short: "Start a new domain at once from a point (instant recovery)",
		Args:  exactArgs(1, "POINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			if as == "" {
				return usageErr("boot needs --as NAME")
			}
			ctx := cmd.Context()
			m, tp, err := a.resolvePoint(ctx, args[0], targetName)
			if err != nil {
				return err
			}
			if dir == "" {
				dir = filepath.Join(a.cfg.StateDir, "images", as)
			}
			argv, err := a.serveArgv(m.ID, "")
			if err != nil {
				return err
			}
			e, done, err := a.engine()
			if err != nil {
				return err
			}
			defer done()
			b, err := e.Boot(ctx, tp.repo, engine.BootRequest{Point: m.ID, Name: as, Dir: dir, Serve: argv, Strict: strict})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.errw, "domain %s is running from point %s\n", as, m.ID)
			if migrate {
				if err := e.Migrate(ctx, b, dir); err != nil {
					return err
				}
				fmt.Fprintf(a.errw, "disks of %s moved to %s; the backup is no longer needed\n", as, dir)
			}
			if a.json {
				return a.printJSON(map[string]any{"domain": as, "uuid": b.UUID, "dir": dir, "migrated": migrate})
			}
			fmt.Fprintln(a.out, b.UUID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&targetName, "target", "", "only look in this target")
	f.StringVar(&as, "as", "", "name of the new domain")
	f.StringVar(&dir, "dir", "", "where overlays (and migrated disks) go")
	f.BoolVar(&migrate, "migrate", false, "then move the disks to local files and drop the backup dependency")
	f.BoolVar(&strict, "strict", false, "refuse a saved definition with parts a boot drops (host devices, passthrough, ...)")
	return cmd
}

// loopbackOnly refuses a --listen address off this host: the NBD server
// has no TLS and no authentication yet, and it serves decrypted disks.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usageErr("--listen %s: %v", addr, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return nil
	}
	return usageErr("--listen %s: only loopback addresses (127.0.0.1, [::1]): NBD is served without TLS or authentication", addr)
}
