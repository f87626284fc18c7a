package backup

import (
	"context"
	"errors"
	"fmt"
	"html"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/qmp"
)

// online backs up a running or paused domain with a libvirt pull-mode
// backup job.
func (b *run) online(ctx context.Context) error {
	q := qmp.NewClient(qmp.NewLibvirtMonitor(b.dom))
	b.newCheckpoint = chain.NewCheckpointName(b.req.Target.Name, time.Now())
	if err := b.staleJob(); err != nil {
		return err
	}
	nodes, err := b.nodes(ctx, q)
	if err != nil {
		return err
	}
	b.planOnline(nodes)
	if err := b.repairOnline(ctx, q, nodes); err != nil {
		return err
	}
	dir, err := b.e.State.NewScratch()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "nbd.sock")

	backupXML, cpXML, err := b.jobXML(sock, dir)
	if err != nil {
		return err
	}
	b.consistency = ConsistencyCrash
	err = b.frozen(ctx, b.freeze, func(context.Context) error {
		return b.dom.BackupBegin(backupXML, cpXML, 0)
	}, func(cctx context.Context) { b.undoOnline(cctx, q) })
	if err != nil {
		return fmt.Errorf("domain %s: start backup job: %w", b.name, err)
	}
	b.log.Info("backup job started", "level", b.level, "checkpoint", b.newCheckpoint, "freeze_ms", b.freezeMS)
	b.phase("job set-up", b.started)
	ok := false
	defer func() {
		if ok {
			return
		}
		cctx, cancel := b.e.cleanupCtx(ctx)
		defer cancel()
		b.undoOnline(cctx, q)
	}()
	if err := b.readExport(ctx, sock); err != nil {
		return err
	}
	// The point is durable: end the job, keep the new checkpoint.
	ok = true
	teardown := time.Now()
	if err := b.dom.AbortJob(); err != nil {
		b.log.Warn("ending the backup job failed", "err", err)
	}
	b.waitJobEnded()
	b.retire(ctx)
	b.phase("teardown", teardown)
	return nil
}

// readExport writes the point from a running job's NBD export at sock
// (export names = disk names).
func (b *run) readExport(ctx context.Context, sock string) error {
	if h := b.req.Hooks; h != nil && h.AfterBegin != nil {
		if err := h.AfterBegin(ctx); err != nil {
			return err
		}
	}
	dial := func(ctx context.Context, d virt.Disk, contexts []string) (*nbd.Pool, error) {
		return nbd.DialPool(ctx, 2, "unix", sock, nbd.Options{Export: d.Target, MetaContexts: contexts})
	}
	copyStart := time.Now()
	_, err := b.copyDisks(ctx, dial)
	if err == nil {
		b.phase("copy (read, hash, compress, store)", copyStart)
	}
	return err
}

// nodes maps each disk to its top block node in QEMU.
func (b *run) nodes(ctx context.Context, q *qmp.Client) (map[string]qmp.BlockNode, error) {
	all, err := q.QueryBlockNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("domain %s: query block nodes: %w", b.name, err)
	}
	out := map[string]qmp.BlockNode{}
	for _, d := range b.disks {
		name, err := q.DeviceNode(ctx, d.Alias)
		if err != nil {
			return nil, fmt.Errorf("domain %s disk %s: %w", b.name, d.Target, err)
		}
		for _, n := range all {
			if n.NodeName == name {
				out[d.Target] = n
			}
		}
		if _, ok := out[d.Target]; !ok {
			return nil, fmt.Errorf("domain %s disk %s: node %q: %w", b.name, d.Target, name, qmp.ErrNodeNotFound)
		}
	}
	return out, nil
}

// planOnline decides, per disk, whether it can be read incrementally
// (package chain), and redefines checkpoint metadata libvirt lost.
func (b *run) planOnline(nodes map[string]qmp.BlockNode) {
	var disks []chain.Disk
	for _, d := range b.disks {
		n := nodes[d.Target]
		disks = append(disks, chain.Disk{Name: d.Target, Format: d.Format, Size: n.Image.VirtualSize, Bitmaps: qmpBitmaps(n.DirtyBitmaps), Where: "node " + n.NodeName})
	}
	b.plan = chain.NewPlan(b.req.Target.Name, b.level, b.base, disks)
	for _, d := range b.disks {
		cp, ok := b.plan.Incr[d.Target]
		if !ok {
			continue
		}
		if err := b.ensureCheckpointMetadata(cp); err != nil {
			b.plan.ReadInFull(d.Target, chain.Reason{Kind: chain.MetadataLost, Checkpoint: cp,
				Text: fmt.Sprintf("checkpoint %s: libvirt metadata missing and could not be redefined: %v", cp, err)})
		}
	}
	b.logFull()
}

// logFull says which disks of an incremental are read in full, and why.
func (b *run) logFull() {
	for _, d := range b.disks {
		if r, ok := b.plan.Full[d.Target]; ok {
			b.log.Warn("disk read in full", "disk", d.Target, "reason", r.String())
		}
	}
}

// qmpBitmaps are QEMU's dirty bitmaps as the chain sees them.
func qmpBitmaps(bms []qmp.DirtyBitmap) []chain.Bitmap {
	out := make([]chain.Bitmap, len(bms))
	for i, bm := range bms {
		out[i] = chain.Bitmap{Name: bm.Name, Recording: bm.Recording, Inconsistent: bm.Inconsistent}
	}
	return out
}

// ensureCheckpointMetadata redefines lost libvirt checkpoint metadata from
// what the repository knows, when the bitmaps themselves are fine.
func (b *run) ensureCheckpointMetadata(cp string) error {
	c, err := b.dom.CheckpointLookupByName(cp, 0)
	if err == nil {
		c.Free()
		return nil
	}
	if !errors.Is(err, libvirt.ERR_NO_DOMAIN_CHECKPOINT) {
		return err
	}
	xml, err := virt.CheckpointXML(cp, b.base.Time, b.dx, func(dev string) bool {
		_, ok := b.plan.Incr[dev]
		return ok || b.plan.UsesCheckpoint(dev, cp)
	})
	if err != nil {
		return err
	}
	nc, err := b.dom.CreateCheckpointXML(xml, libvirt.DOMAIN_CHECKPOINT_CREATE_REDEFINE)
	if err != nil {
		return err
	}
	nc.Free()
	b.res.Repairs = append(b.res.Repairs, "redefined lost libvirt metadata of checkpoint "+cp)
	b.log.Warn("redefined lost checkpoint metadata", "checkpoint", cp)
	return nil
}

// repairOnline removes what earlier runs or crashes left behind in this
// target's lineage: checkpoints no point refers to (a failed run's), broken
// checkpoints, and bitmaps of ours that libvirt does not know.
func (b *run) repairOnline(ctx context.Context, q *qmp.Client, nodes map[string]qmp.BlockNode) error {
	prefix := chain.Prefix(b.req.Target.Name)
	keep := b.chain.Keep(b.plan)
	cps, err := b.dom.ListAllCheckpoints(0)
	if err != nil {
		return fmt.Errorf("domain %s: list checkpoints: %w", b.name, err)
	}
	known := map[string]bool{} // checkpoints libvirt has, or had until we deleted them
	for i := range cps {
		c := &cps[i]
		n, _ := c.GetName()
		known[n] = true
		if strings.HasPrefix(n, prefix) && !keep[n] {
			b.deleteCheckpoint(c, n, q, "not needed by this target's chain (left by a failed or superseded run)")
		}
		c.Free()
	}
	for disk, n := range nodes {
		for _, bm := range n.DirtyBitmaps {
			if strings.HasPrefix(bm.Name, prefix) && !known[bm.Name] && b.plan.Incr[disk] != bm.Name {
				err := q.Transaction(ctx, qmp.RemoveBitmap(n.NodeName, bm.Name))
				if err != nil {
					b.log.Warn("removing orphan bitmap failed", "disk", disk, "bitmap", bm.Name, "err", err)
					continue
				}
				b.res.Repairs = append(b.res.Repairs, fmt.Sprintf("removed orphan bitmap %s from disk %s", bm.Name, disk))
				b.log.Warn("removed orphan bitmap", "disk", disk, "bitmap", bm.Name)
			}
		}
	}
	return nil
}

// deleteCheckpoint removes a checkpoint and its bitmaps; when libvirt
// cannot (its bitmap is already gone), it drops the metadata only.
func (b *run) deleteCheckpoint(c *libvirt.DomainCheckpoint, name string, q *qmp.Client, why string) {
	if err := c.Delete(0); err != nil {
		if err2 := c.Delete(libvirt.DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY); err2 != nil {
			b.log.Warn("deleting checkpoint failed", "checkpoint", name, "err", err, "metadata_err", err2)
			return
		}
	}
	b.res.Repairs = append(b.res.Repairs, fmt.Sprintf("deleted checkpoint %s: %s", name, why))
	b.log.Info("deleted checkpoint", "checkpoint", name, "why", why)
}

// jobXML builds the pull-mode backup XML and the new checkpoint's XML.
func (b *run) jobXML(sock, dir string) (string, string, error) {
	var bx strings.Builder
	fmt.Fprintf(&bx, "<domainbackup mode='pull'><server transport='unix' socket='%s'/><disks>", html.EscapeString(sock))
	chosen := map[string]virt.Disk{}
	for _, d := range b.disks {
		chosen[d.Target] = d
	}
	for _, xd := range b.dx.Devices.Disks {
		if xd.Target == nil {
			continue
		}
		name := html.EscapeString(xd.Target.Dev)
		d, ok := chosen[xd.Target.Dev]
		if !ok {
			fmt.Fprintf(&bx, "<disk name='%s' backup='no'/>", name)
			continue
		}
		mode := "backupmode='full'"
		if cp := b.plan.Incr[d.Target]; cp != "" {
			mode = fmt.Sprintf("backupmode='incremental' incremental='%s'", html.EscapeString(cp))
		}
		fmt.Fprintf(&bx, "<disk name='%s' backup='yes' type='file' %s><scratch file='%s'/></disk>",
			name, mode, html.EscapeString(filepath.Join(dir, d.Target+".scratch")))
	}
	bx.WriteString("</disks></domainbackup>")
	cx, err := virt.CheckpointXML(b.newCheckpoint, time.Time{}, b.dx, func(dev string) bool {
		d, ok := chosen[dev]
		return ok && d.Format == "qcow2"
	})
	return bx.String(), cx, err
}

func (b *run) dirtyContext(d virt.Disk, since string) string {
	if b.namedBitmaps {
		return nbd.ContextDirtyBitmapPrefix + since
	}
	return nbd.ContextDirtyBitmapPrefix + "backup-" + d.Target
}

// freeze quiesces the guest's filesystems through the agent when asked;
// the returned thaw must be called right after the backup job starts.
// ErrFreezeDeadline means starting the backup job took longer than the
// freeze timeout: the guest was thawed and the backup given up.
var ErrFreezeDeadline = errors.New("the backup job did not start within the freeze timeout")

// frozen runs begin (libvirt's BackupBegin, QEMU's transaction) with the
// guest quiesced by freeze. The thaw is deferred, so it runs on every
// path, a panic in begin included. begin has the freeze timeout (default
// 10 s): past it the guest is thawed and the backup fails with
// ErrFreezeDeadline; a begin that still succeeds afterwards is undone by
// late, so the domain is left as it was.
func (b *run) frozen(ctx context.Context, freeze func(context.Context) (func(), error), begin func(context.Context) error, late func(context.Context)) error {
	thaw, err := freeze(ctx)
	if err != nil {
		return err
	}
	thawOnce := sync.OnceFunc(thaw)
	defer thawOnce()
	timeout := b.req.FreezeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{panic: p}
			}
		}()
		if h := b.req.Hooks; h != nil && h.BeforeBegin != nil {
			h.BeforeBegin()
		}
		done <- result{err: begin(bctx)}
	}()
	select {
	case r := <-done:
		if r.panic != nil {
			thawOnce()
			panic(r.panic)
		}
		return r.err
	case <-time.After(timeout):
	}
	thawOnce()
	b.log.Error("the backup job did not start within the freeze timeout: guest thawed, backup given up", "timeout", timeout)
	cctx, ccancel := b.e.cleanupCtx(ctx)
	defer ccancel()
	select {
	case r := <-done:
		if r.err == nil && r.panic == nil {
			late(cctx) // it started after all: undo it
		}
	case <-cctx.Done():
		b.log.Error("starting the backup job has not returned; the next backup ends what it left")
	}
	return fmt.Errorf("%w (%v)", ErrFreezeDeadline, timeout)
}

func (b *run) freeze(ctx context.Context) (func(), error) {
	uri, _ := b.e.Conn.GetURI()
	return b.quiesce(ctx, guestagent.LibvirtAgent{Dom: b.dom}, guestagent.Intent{Kind: "libvirt", URI: uri, Target: b.uuid, Name: b.name})
}

// quiesce freezes the guest through agent per the request's policy,
// records the level reached, and returns the thaw to call once the backup
// job has started.
func (b *run) quiesce(ctx context.Context, agent guestagent.Agent, intent guestagent.Intent) (func(), error) {
	fr := &guestagent.Freezer{Agent: agent, Journal: FreezeJournal(b.e.State), Intent: intent, Log: b.log}
	fz, err := fr.Freeze(ctx, guestagent.Policy{Level: b.req.Consistency, Require: b.req.RequireConsistency,
		Mountpoints: b.req.Mountpoints, PreFreeze: b.req.PreFreeze, PostThaw: b.req.PostThaw, FreezeTimeout: b.req.FreezeTimeout})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.name, err)
	}
	b.consistency = fz.Level
	if fz.Reason != "" {
		b.res.Warnings = append(b.res.Warnings, "crash-consistent: "+fz.Reason)
	}
	return func() {
		d, err := fz.Thaw(ctx)
		b.freezeMS = d.Milliseconds()
		if err != nil {
			b.log.Error("THAW FAILED: the guest may still be frozen; virtkeepd --cleanup retries", "err", err)
			b.res.Warnings = append(b.res.Warnings, "thaw failed: "+err.Error())
		} else if fz.Level != guestagent.Crash {
			b.log.Info("guest thawed", "freeze_ms", b.freezeMS)
		}
	}, nil
}

// undoOnline ends a failed backup: abort the job, drop the new checkpoint.
func (b *run) undoOnline(ctx context.Context, q *qmp.Client) {
	if err := b.dom.AbortJob(); err != nil {
		b.log.Warn("aborting the backup job failed", "err", err)
	}
	b.waitJobEnded()
	c, err := b.dom.CheckpointLookupByName(b.newCheckpoint, 0)
	if err != nil {
		return
	}
	defer c.Free()
	b.deleteCheckpoint(c, b.newCheckpoint, q, "the backup failed")
}

// retire deletes this target's checkpoints the chain no longer needs: all
// but the new one and, for differentials, the last full's.
func (b *run) retire(ctx context.Context) {
	keep := b.chain.Survivors(b.newCheckpoint, b.level)
	prefix := chain.Prefix(b.req.Target.Name)
	cps, err := b.dom.ListAllCheckpoints(0)
	if err != nil {
		b.log.Warn("listing checkpoints failed", "err", err)
		return
	}
	for i := range cps {
		c := &cps[i]
		n, _ := c.GetName()
		if strings.HasPrefix(n, prefix) && !keep[n] {
			b.deleteCheckpoint(c, n, nil, "superseded")
		}
		c.Free()
	}
}

// staleJob ends a backup job a killed virtkeep left running (its NBD socket
// is in one of our runtime directories; we hold the domain's lock, so no
// live virtkeep owns it); another tool's job is an error.
func (b *run) staleJob() error {
	x, err := b.dom.BackupGetXMLDesc(0)
	if err != nil {
		return nil // no job
	}
	var bx libvirtxml.DomainBackup
	ours := false
	var scratch string
	if bx.Unmarshal(x) == nil && bx.Pull != nil && bx.Pull.Server != nil && bx.Pull.Server.UNIX != nil {
		scratch, ours = b.e.State.OwnScratch(bx.Pull.Server.UNIX.Socket)
	}
	if !ours {
		return fmt.Errorf("domain %s: another backup job is running (not started by virtkeep with this state_dir)", b.name)
	}
	if err := b.dom.AbortJob(); err != nil {
		if !errors.Is(err, libvirt.ERR_OPERATION_INVALID) {
			return fmt.Errorf("domain %s: ending a stale backup job: %w", b.name, err)
		}
		// "no job is active": a job that was ending as we looked.
		b.waitJobEnded()
		return nil
	}
	b.waitJobEnded()
	_ = os.RemoveAll(scratch)
	b.res.Repairs = append(b.res.Repairs, "ended a stale backup job left by an interrupted run")
	b.log.Warn("ended a stale backup job left by an interrupted run")
	return nil
}

// waitJobEnded waits (up to 10 s) until libvirt no longer reports a backup
// job: ending one is asynchronous.
func (b *run) waitJobEnded() {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := b.dom.BackupGetXMLDesc(0); err != nil {
			return
		}
	}
}

// EndStaleJob ends the backup job an interrupted virtkeep (a daemon
// killed mid-backup) left on domain uuid, and deletes its scratch files;
// the next backup repairs the checkpoints. A domain without a job, or one
// that is gone, needs nothing.
func (e *Driver) EndStaleJob(ctx context.Context, uuid string) error {
	dom, err := virt.LookupUUID(e.Conn, uuid)
	if dom == nil {
		return err
	}
	defer dom.Free()
	name, _ := dom.GetName()
	unlock, err := e.State.LockDomain(ctx, uuid, name, e.log())
	if err != nil {
		return err
	}
	defer unlock()
	b := &run{e: e, dom: dom, name: name, uuid: uuid, log: e.log().With("domain", name), res: &Result{}}
	return b.staleJob()
}
