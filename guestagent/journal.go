package guestagent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
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

// Pending lists the records left, oldest first.
func (j Journal) Pending() ([]Intent, error) {
	ents, err := os.ReadDir(j.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("freeze journal: %w", err)
	}
	var out []Intent
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(j.Dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("freeze journal: %w", err)
		}
		var in Intent
		if err := json.Unmarshal(b, &in); err != nil || in.Target == "" {
			return nil, fmt.Errorf("freeze journal: %s is damaged: remove it after thawing the guest it names by hand", e.Name())
		}
		out = append(out, in)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Since.Before(out[b].Since) })
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
