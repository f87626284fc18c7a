package guestagent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Intent is the durable record that a guest is about to be frozen. It
// outlives a killed daemon, whose next start (or virtkeepd --cleanup) thaws
// every guest a record names.
type Intent struct {
	// Kind is "libvirt" (Target is a domain UUID, URI the connection) or
	// "socket" (Target is the agent socket of a plain QEMU).
	Kind   string    `json:"kind"`
	URI    string    `json:"uri,omitempty"`
	Target string    `json:"target"`
	Name   string    `json:"name,omitempty"`
	Since  time.Time `json:"since"`
	PID    int       `json:"pid"`
	// Start is the owner's start time (clock ticks since boot, from
	// /proc/PID/stat) and BootID the boot it ran in: together with PID
	// they tell a live owner from a PID reused after it died.
	Start  uint64 `json:"start,omitempty"`
	BootID string `json:"boot_id,omitempty"`
}

// OwnerAlive reports whether the process that recorded in still runs:
// same boot, same PID, same start time.
func (in Intent) OwnerAlive() bool {
	if in.PID <= 0 || in.BootID == "" || in.BootID != bootID() {
		return false
	}
	start, err := processStart(in.PID)
	return err == nil && (in.Start == 0 || start == in.Start)
}

// self fills in the recording process's identity.
func (in Intent) self() Intent {
	in.PID = os.Getpid()
	in.Start, _ = processStart(in.PID)
	in.BootID = bootID()
	return in
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// processStart reads a process's start time (field 22 of /proc/PID/stat,
// counted after the command name, which may hold spaces). target/lock.go
// has its twin: neither package may import the other.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("malformed /proc stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Journal keeps intent records in a directory.
type Journal struct {
	Dir string
}

func (j Journal) path(in Intent) string {
	sum := sha256.Sum256([]byte(in.Kind + "\x00" + in.URI + "\x00" + in.Target))
	return filepath.Join(j.Dir, hex.EncodeToString(sum[:8])+".json")
}

// Record writes in durably (file and directory fsynced) before a freeze.
func (j Journal) Record(in Intent) error {
	if err := os.MkdirAll(j.Dir, 0o700); err != nil {
		return fmt.Errorf("freeze journal: %w", err)
	}
	b, _ := json.Marshal(in)
	p := j.path(in)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("freeze journal: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err == nil {
		err = syncDir(j.Dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("freeze journal: %w", err)
	}
	return nil
}

// Done removes the record once the guest is thawed.
func (j Journal) Done(in Intent) error {
	if err := os.Remove(j.path(in)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("freeze journal: %w", err)
	}
	return syncDir(j.Dir)
}

// ErrDamagedRecord is wrapped by Pending's error for a record it cannot
// read; the other records are returned all the same.
var ErrDamagedRecord = errors.New("freeze journal record damaged")

// Pending lists the records left, oldest first. A damaged record does not
// hide the others: they are returned with an error wrapping
// ErrDamagedRecord that names each damaged file.
func (j Journal) Pending() ([]Intent, error) {
	ents, err := os.ReadDir(j.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("freeze journal: %w", err)
	}
	var out []Intent
	var damaged []string
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(j.Dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // thawed meanwhile
		}
		var in Intent
		if err == nil {
			err = json.Unmarshal(b, &in)
		}
		if err != nil || in.Target == "" || (in.Kind != "libvirt" && in.Kind != "socket") {
			damaged = append(damaged, e.Name())
			continue
		}
		out = append(out, in)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Since.Before(out[b].Since) })
	if len(damaged) > 0 {
		return out, fmt.Errorf("%w: %s in %s: thaw the guests they name by hand, then remove them", ErrDamagedRecord, strings.Join(damaged, ", "), j.Dir)
	}
	return out, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
