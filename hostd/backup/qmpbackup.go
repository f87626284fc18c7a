package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/qmp"
)

// QMPRequest asks for a backup of a QEMU process that libvirt does not
// manage, through its QMP socket.
type QMPRequest struct {
	// Monitor is a connected QMP client of the process.
	Monitor *qmp.Client
	// Name names the VM in the repository (QMP's query-name when empty).
	Name   string
	Target Target
	Level  string // full, inc, diff, auto
	Disks  []string
	// AgentSocket is the host side of the guest agent's virtio-serial port,
	// for fs and app consistency.
	AgentSocket        string
	Consistency        string // crash (default), fs, app
	RequireConsistency bool
	FreezeTimeout      time.Duration
	// Progress, Hooks: as in BackupRequest.
	Progress Progress
	Hooks    *Hooks
}

// BackupQMP backs up a plain QEMU process: in one QMP transaction it
// freezes the previous bitmap, adds the next one and starts a fleecing
// blockdev-backup (sync=none) into a temporary overlay; the overlay is
// exported over NBD with the previous bitmap, read like a libvirt pull-mode
// export, and every node, job and export it added is removed afterwards.
func (e *Driver) BackupQMP(ctx context.Context, req QMPRequest) (*Result, error) {
	if !targetNameRe.MatchString(req.Target.Name) {
		return nil, fmt.Errorf("target name %q: use 1-32 letters, digits, - or _", req.Target.Name)
	}
	q := req.Monitor
	name := req.Name
	if name == "" {
		var n struct {
			Name string `json:"name"`
		}
		if err := q.Execute(ctx, "query-name", nil, &n); err != nil {
			return nil, err
		}
		if name = n.Name; name == "" {
			return nil, errors.New("the QEMU process has no -name: give the VM a name")
		}
	}
	var u struct {
		UUID string `json:"UUID"`
	}
	if err := q.Execute(ctx, "query-uuid", nil, &u); err != nil {
		return nil, err
	}
	uuid := u.UUID
	if uuid == "" || uuid == "00000000-0000-0000-0000-000000000000" {
		uuid = "qemu:" + name // stable identity for the chain
	}
	switch req.Level {
	case "":
		req.Level = chain.LevelAuto
	case chain.LevelAuto, chain.LevelFull, chain.LevelInc, chain.LevelDiff:
	default:
		return nil, fmt.Errorf("level %q: want full, inc, diff or auto", req.Level)
	}
	log := e.log().With("vm", name, "target", req.Target.Name)
	disks, nodes, err := qmpDisks(ctx, q, req.Disks)
	if err != nil {
		return nil, err
	}
	ch, err := chain.Load(ctx, req.Target.Repo, uuid, nil, e.log())
	if err != nil {
		return nil, err
	}
	level, base := ch.Resolve(req.Level, log)
	b := &run{e: e, name: name, uuid: uuid, log: log, disks: disks, level: level, base: base, chain: ch,
		res: &Result{}, namedBitmaps: true, consistency: ConsistencyCrash,
		req: BackupRequest{Target: req.Target, Progress: req.Progress, Hooks: req.Hooks,
			Consistency: req.Consistency, RequireConsistency: req.RequireConsistency, FreezeTimeout: req.FreezeTimeout}}
	b.agentSocket = req.AgentSocket
	b.newCheckpoint = chain.NewCheckpointName(req.Target.Name, time.Now())
	var cds []chain.Disk
	for _, d := range disks {
		n := nodes[d.Target]
		cds = append(cds, chain.Disk{Name: d.Target, Format: d.Format, Size: n.Image.VirtualSize, Bitmaps: qmpBitmaps(n.DirtyBitmaps), Where: "node " + n.NodeName})
	}
	b.plan = chain.NewPlan(req.Target.Name, level, base, cds)
	b.logFull()
	if err := b.qmpBackup(ctx, q, nodes); err != nil {
		return nil, err
	}
	return b.res, nil
}

// qmpDisks lists the guest disks of a QEMU process: named by their qdev id.
func qmpDisks(ctx context.Context, q *qmp.Client, only []string) ([]virt.Disk, map[string]qmp.BlockNode, error) {
	devs, err := q.QueryBlockDevices(ctx)
	if err != nil {
		return nil, nil, err
	}
	all, err := q.QueryBlockNodes(ctx)
	if err != nil {
		return nil, nil, err
	}
	byName := map[string]qmp.BlockNode{}
	for _, n := range all {
		byName[n.NodeName] = n
	}
	var disks []virt.Disk
	nodes := map[string]qmp.BlockNode{}
	for _, d := range devs {
		if d.Inserted == nil || !strings.HasPrefix(d.QdevID, "/machine/peripheral/") {
			continue
		}
		id := strings.TrimPrefix(d.QdevID, "/machine/peripheral/")
		id, _, _ = strings.Cut(id, "/")
		if len(only) > 0 && !slices.Contains(only, id) {
			continue
		}
		n, ok := byName[d.Inserted.NodeName]
		if !ok || n.ReadOnly {
			continue
		}
		format := n.Driver
		if format != "qcow2" && format != "raw" {
			continue
		}
		disks = append(disks, virt.Disk{Target: id, Path: n.File, Format: format, Alias: id, Kind: "file"})
		nodes[id] = n
	}
	for _, o := range only {
		if _, ok := nodes[o]; !ok {
			return nil, nil, fmt.Errorf("the QEMU process has no writable disk %q", o)
		}
	}
	if len(disks) == 0 {
		return nil, nil, errors.New("the QEMU process has no disk to back up")
	}
	return disks, nodes, nil
}

func (b *run) qmpBackup(ctx context.Context, q *qmp.Client, nodes map[string]qmp.BlockNode) error {
	dir, err := b.e.State.NewScratch()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "nbd.sock")
	tag := b.newCheckpoint[strings.LastIndex(b.newCheckpoint, ".")+1:]
	fleece := func(d virt.Disk) string { return "vk-fleece-" + d.Target }
	job := func(d virt.Disk) string { return "vk-job-" + d.Target }

	// Overlays for copy-before-write.
	for _, d := range b.disks {
		f := filepath.Join(dir, d.Target+".fleece.qcow2")
		if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", f, fmt.Sprint(nodes[d.Target].Image.VirtualSize)).CombinedOutput(); err != nil {
			return fmt.Errorf("fleece image: %v: %s", err, out)
		}
		if err := os.Chmod(f, 0o600); err != nil { // the guest's old data goes here
			return err
		}
	}
	var undo []func(context.Context)
	ok := false
	defer func() {
		if ok {
			return
		}
		cctx, cancel := b.e.cleanupCtx(ctx)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i](cctx)
		}
	}()
	teardown := func(cctx context.Context) {
		_ = q.Execute(cctx, "nbd-server-stop", nil, nil)
		for _, d := range b.disks {
			_ = q.Execute(cctx, "block-job-cancel", map[string]any{"device": job(d), "force": true}, nil)
		}
		for _, d := range b.disks {
			b.waitJobGone(cctx, q, job(d))
			if err := q.Execute(cctx, "blockdev-del", map[string]any{"node-name": fleece(d)}, nil); err != nil && !errors.Is(err, qmp.ClassGenericError) {
				b.log.Warn("removing the fleecing node failed", "node", fleece(d), "err", err)
			}
		}
	}
	for _, d := range b.disks {
		n := nodes[d.Target]
		err := q.Execute(ctx, "blockdev-add", map[string]any{
			"driver": "qcow2", "node-name": fleece(d), "backing": n.NodeName,
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, d.Target+".fleece.qcow2")},
		}, nil)
		if err != nil {
			return fmt.Errorf("disk %s: fleecing node: %w", d.Target, err)
		}
		dd := d
		undo = append(undo, func(cctx context.Context) {
			_ = q.Execute(cctx, "blockdev-del", map[string]any{"node-name": fleece(dd)}, nil)
		})
	}
	// One transaction: the point in time.
	var actions []qmp.Action
	for _, d := range b.disks {
		n := nodes[d.Target]
		if d.Format == "qcow2" {
			actions = append(actions, qmp.AddBitmap(n.NodeName, b.newCheckpoint, qmp.BitmapOptions{Persistent: true}))
		}
		if cp := b.plan.Incr[d.Target]; cp != "" {
			actions = append(actions, qmp.DisableBitmap(n.NodeName, cp))
		}
		actions = append(actions, qmp.Action{Type: "blockdev-backup", Data: map[string]any{
			"job-id": job(d), "device": n.NodeName, "target": fleece(d), "sync": "none", "auto-finalize": true, "auto-dismiss": true}})
	}
	// Undo runs last-first: the export and job go before the bitmaps they
	// hold busy are touched.
	restoreBitmaps := func(cctx context.Context) {
		// Give the chain back its state: the old bitmaps record again,
		// with what was written meanwhile; the new ones go.
		for _, d := range b.disks {
			n := nodes[d.Target]
			var acts []qmp.Action
			if cp := b.plan.Incr[d.Target]; cp != "" && d.Format == "qcow2" {
				acts = append(acts, qmp.MergeBitmaps(n.NodeName, cp, b.newCheckpoint), qmp.EnableBitmap(n.NodeName, cp))
			}
			if d.Format == "qcow2" {
				acts = append(acts, qmp.RemoveBitmap(n.NodeName, b.newCheckpoint))
			}
			if err := q.Transaction(cctx, acts...); err != nil {
				b.log.Warn("restoring bitmaps failed", "disk", d.Target, "err", err)
			}
		}
	}
	err = b.frozen(ctx, b.freezeSocket, func(bctx context.Context) error {
		return q.Transaction(bctx, actions...)
	}, func(cctx context.Context) { teardown(cctx); restoreBitmaps(cctx) })
	if err != nil {
		return fmt.Errorf("start fleecing: %w", err)
	}
	b.log.Info("fleecing started", "tag", tag, "level", b.level)
	undo = append(undo, restoreBitmaps, teardown)
	if err := q.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}}, nil); err != nil {
		return fmt.Errorf("nbd-server-start: %w", err)
	}
	for _, d := range b.disks {
		args := map[string]any{"type": "nbd", "id": "vk-export-" + d.Target, "node-name": fleece(d), "name": d.Target, "writable": false}
		if cp := b.plan.Incr[d.Target]; cp != "" {
			args["bitmaps"] = []string{cp}
		}
		if err := q.Execute(ctx, "block-export-add", args, nil); err != nil {
			return fmt.Errorf("disk %s: export: %w", d.Target, err)
		}
	}
	if err := b.readExport(ctx, sock); err != nil {
		return err
	}
	ok = true
	cctx, cancel := b.e.cleanupCtx(ctx)
	defer cancel()
	teardown(cctx)
	// Retire: old bitmaps of this target that the chain no longer needs.
	keep := b.chain.Survivors(b.newCheckpoint, b.level)
	fresh, err := q.QueryBlockNodes(cctx)
	if err != nil {
		return nil
	}
	prefix := chain.Prefix(b.req.Target.Name)
	for _, d := range b.disks {
		for _, n := range fresh {
			if n.NodeName != nodes[d.Target].NodeName {
				continue
			}
			for _, bm := range n.DirtyBitmaps {
				switch {
				case strings.HasPrefix(bm.Name, prefix) && !keep[bm.Name]:
					_ = q.Transaction(cctx, qmp.RemoveBitmap(n.NodeName, bm.Name))
				case keep[bm.Name] && !bm.Recording && bm.Name != b.newCheckpoint:
					// The anchor was frozen for this backup: give it what
					// was written since (the new bitmap has it) and let it
					// record again.
					if err := q.Transaction(cctx, qmp.MergeBitmaps(n.NodeName, bm.Name, b.newCheckpoint), qmp.EnableBitmap(n.NodeName, bm.Name)); err != nil {
						b.log.Warn("re-enabling the chain's anchor bitmap failed", "bitmap", bm.Name, "err", err)
					}
				}
			}
		}
	}
	return nil
}

// waitJobGone waits until a block job has ended after its cancel.
func (b *run) waitJobGone(ctx context.Context, q *qmp.Client, id string) {
	for ctx.Err() == nil {
		var jobs []struct {
			Device string `json:"device"`
		}
		if err := q.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
			return
		}
		found := false
		for _, j := range jobs {
			found = found || j.Device == id
		}
		if !found {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freezeSocket freezes a plain QEMU guest through its agent socket.
func (b *run) freezeSocket(ctx context.Context) (func(), error) {
	if b.req.Consistency == "" || b.req.Consistency == ConsistencyCrash {
		return func() {}, nil
	}
	var agent guestagent.Agent = &guestagent.SocketAgent{Path: b.agentSocket}
	if b.agentSocket == "" {
		agent = noAgent{}
	}
	return b.quiesce(ctx, agent, guestagent.Intent{Kind: "socket", Target: b.agentSocket, Name: b.name})
}

// noAgent stands for a guest with no agent socket configured.
type noAgent struct{}

func (noAgent) Command(_ context.Context, cmd string, _, _ any) error {
	return fmt.Errorf("guest agent %s: %w: no agent socket given", cmd, guestagent.ErrUnavailable)
}
