// Package domain rebuilds a libvirt domain definition saved in a point
// (which an attacker who can write the repository may have written) from
// an allow-list, for restores as a new domain and boots from a backup:
// what it drops or changes is named, and a strict caller refuses drops.
// It also gives the rebuilt domain a fresh identity and its new disks.
package domain

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// ErrUnsafeDomain is wrapped by the error a strict restore or boot returns
// when the saved domain definition held parts it does not take.
var ErrUnsafeDomain = errors.New("the saved domain definition holds parts a restore does not take")

// DefaultBootFileDirs are where a restored domain may take firmware, NVRAM
// templates, kernels and initrds from: the distribution's firmware and
// libvirt's own directory for boot files.
var DefaultBootFileDirs = []string{"/usr/share/OVMF", "/usr/share/AAVMF", "/usr/share/qemu", "/usr/share/seabios",
	"/usr/share/edk2", "/usr/share/ovmf", "/var/lib/libvirt/boot"}

// domainKeep and devicesKeep are the parts of a saved definition a
// restored or booted domain keeps; each kept part is checked below. The
// definition comes from the repository, which an attacker may have
// written: <hostdev>, <filesystem> passing the host's / through,
// qemu:commandline, seclabel type='none', an interface script, a chardev
// on a host device or a disk on a host file would all run as root's gift.
var (
	domainKeep = fields("XMLName", "Type", "Name", "Title", "Description", "MaximumMemory", "Memory", "CurrentMemory",
		"VCPU", "VCPUs", "IOThreads", "SysInfo", "OS", "Features", "CPU", "Clock", "OnPoweroff", "OnReboot", "OnCrash", "PM", "Devices")
	devicesKeep = fields("Emulator", "Disks", "Controllers", "Interfaces", "Serials", "Consoles", "Channels", "Inputs",
		"TPMs", "Graphics", "Sounds", "Videos", "Hubs", "Watchdogs", "MemBalloon", "RNGs", "Panics", "IOMMU", "IOMMUs", "VSock")
	emulatorRe = regexp.MustCompile(`^/usr/(bin|libexec)/(qemu-system-[a-z0-9_]+|qemu-kvm)$`)
)

func fields(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// Filter builds a restored domain from a saved definition. What it
// drops is listed for warnings or, with --strict, refusal; what it only
// changes (graphics on loopback, a serial port on a pty) is warned about.
type Filter struct {
	bootDirs []string
	dropped  []string
	changed  []string
}

func (f *Filter) drop(format string, args ...any) {
	f.dropped = append(f.dropped, fmt.Sprintf(format, args...))
}

func (f *Filter) change(format string, args ...any) {
	f.changed = append(f.changed, fmt.Sprintf(format, args...))
}

// safeDomain parses a point's saved domain XML and keeps only what a
// restore needs: the machine, memory, CPUs, firmware from allowed
// directories, the ordinary device model, NICs on libvirt networks or
// bridges, graphics on loopback, consoles on a pty. Everything else is
// dropped and named. Disks are the caller's, through rewriteDisks.
func safeDomain(src string, bootDirs []string) (*libvirtxml.Domain, *Filter, error) {
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(src); err != nil {
		return nil, nil, fmt.Errorf("domain XML: %w", err)
	}
	if dx.Type != "kvm" && dx.Type != "qemu" {
		return nil, nil, fmt.Errorf("domain XML: type %q: only kvm and qemu domains are restored", dx.Type)
	}
	if dx.Devices == nil {
		dx.Devices = &libvirtxml.DomainDeviceList{}
	}
	f := &Filter{bootDirs: bootDirs}
	f.keepFields(reflect.ValueOf(&dx).Elem(), domainKeep, "")
	f.keepFields(reflect.ValueOf(dx.Devices).Elem(), devicesKeep, "devices/")
	f.os(&dx)
	f.devices(dx.Devices)
	return &dx, f, nil
}

// report logs what was dropped and changed; strict turns drops into an
// error that names them all.
func (f *Filter) Report(log *slog.Logger, point string, strict bool) error {
	if strict && len(f.dropped) > 0 {
		return fmt.Errorf("point %s: %w (--strict): %s", point, ErrUnsafeDomain, strings.Join(f.dropped, "; "))
	}
	for _, d := range f.dropped {
		log.Warn("saved domain definition: "+d, "point", point)
	}
	for _, c := range f.changed {
		log.Warn("saved domain definition: "+c, "point", point)
	}
	return nil
}

// keepFields zeroes every set field of v that keep does not name, noting
// it by its XML element name.
func (f *Filter) keepFields(v reflect.Value, keep map[string]bool, where string) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		fv := v.Field(i)
		if keep[sf.Name] || fv.IsZero() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("xml"), ",")
		if name == "" || name == "-" {
			name = sf.Name
		}
		if sf.Name != "ID" && sf.Name != "UUID" { // replaced anyway
			f.drop("dropped <%s%s>", where, name)
		}
		fv.Set(reflect.Zero(sf.Type))
	}
}

// bootFile reports whether a host file a domain reads at start (firmware,
// kernel) lies in an allowed directory.
func (f *Filter) bootFile(p string) bool {
	if p == "" || !filepath.IsAbs(p) {
		return false
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		real = filepath.Clean(p)
	}
	for _, d := range f.bootDirs {
		if rd, err := filepath.EvalSymlinks(d); err == nil {
			d = rd
		}
		if strings.HasPrefix(real, filepath.Clean(d)+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

func (f *Filter) os(dx *libvirtxml.Domain) {
	os := dx.OS
	if os == nil {
		return
	}
	keep := &libvirtxml.DomainOS{Type: os.Type, Firmware: os.Firmware, FirmwareInfo: os.FirmwareInfo,
		BootDevices: os.BootDevices, BootMenu: os.BootMenu, BIOS: os.BIOS}
	if l := os.Loader; l != nil {
		if l.Path == "" || f.bootFile(l.Path) {
			ll := *l
			if ll.Path != "" && ll.Readonly != "yes" {
				f.change("loader %s made read-only", ll.Path)
				ll.Readonly = "yes"
			}
			keep.Loader = &ll
		} else {
			f.drop("dropped <os/loader> %s: not in an allowed firmware directory", l.Path)
		}
	}
	if n := os.NVRam; n != nil {
		nv := &libvirtxml.DomainNVRam{Format: n.Format, TemplateFormat: n.TemplateFormat}
		if n.Template != "" && !f.bootFile(n.Template) {
			f.drop("dropped the NVRAM template %s: not in an allowed firmware directory", n.Template)
		} else {
			nv.Template = n.Template
		}
		keep.NVRam = nv // the restore sets the file
	}
	for _, k := range []struct{ name, path string }{{"kernel", os.Kernel}, {"initrd", os.Initrd}, {"dtb", os.DTB}, {"shim", os.Shim}} {
		switch {
		case k.path == "":
		case f.bootFile(k.path):
			switch k.name {
			case "kernel":
				keep.Kernel, keep.Cmdline = os.Kernel, os.Cmdline
			case "initrd":
				keep.Initrd = os.Initrd
			case "dtb":
				keep.DTB = os.DTB
			case "shim":
				keep.Shim = os.Shim
			}
		default:
			f.drop("dropped <os/%s> %s: not in an allowed boot file directory", k.name, k.path)
		}
	}
	if os.SMBios != nil && os.SMBios.Mode != "host" {
		keep.SMBios = os.SMBios
	} else if os.SMBios != nil {
		f.drop("dropped <os/smbios mode='host'>")
	}
	if os.ACPI != nil {
		f.drop("dropped <os/acpi> (tables from host files)")
	}
	dx.OS = keep
}

func (f *Filter) devices(d *libvirtxml.DomainDeviceList) {
	if d.Emulator != "" && !emulatorRe.MatchString(d.Emulator) {
		f.change("dropped <emulator> %s: libvirt's default is used", d.Emulator)
		d.Emulator = ""
	}
	f.interfaces(d)
	f.chardevs(d)
	f.graphics(d)
	inputs := d.Inputs[:0]
	for _, in := range d.Inputs {
		if (in.Type == "tablet" || in.Type == "mouse" || in.Type == "keyboard") && (in.Source == nil || in.Source.Passthrough == nil && in.Source.EVDev == nil) {
			in.Source = nil
			inputs = append(inputs, in)
		} else {
			f.drop("dropped <input type='%s'> (host input devices)", in.Type)
		}
	}
	d.Inputs = inputs
	rngs := d.RNGs[:0]
	for _, r := range d.RNGs {
		if b := r.Backend; b != nil && b.EGD == nil && (b.Random == nil || b.Random.Device == "/dev/urandom" || b.Random.Device == "/dev/random") {
			rngs = append(rngs, r)
		} else {
			f.drop("dropped <rng> with a backend other than /dev/urandom")
		}
	}
	d.RNGs = rngs
	tpms := d.TPMs[:0]
	for _, t := range d.TPMs {
		if t.Backend != nil && t.Backend.Emulator != nil && t.Backend.Passthrough == nil && t.Backend.External == nil {
			em := *t.Backend.Emulator
			em.Source, em.PersistentState = nil, ""
			t.Backend = &libvirtxml.DomainTPMBackend{Emulator: &em}
			tpms = append(tpms, t)
		} else {
			f.drop("dropped <tpm> that is not emulated (host TPM)")
		}
	}
	d.TPMs = tpms
	if d.VSock != nil {
		d.VSock.CID = &libvirtxml.DomainVSockCID{Auto: "yes"}
	}
}

// interfaces keeps NICs on a libvirt network, a bridge or user networking,
// rebuilt from their harmless parts: no scripts, tap devices, host
// interfaces, ROM files or fixed MACs.
func (f *Filter) interfaces(d *libvirtxml.DomainDeviceList) {
	var out []libvirtxml.DomainInterface
	for _, in := range d.Interfaces {
		src := in.Source
		var s *libvirtxml.DomainInterfaceSource
		switch {
		case src != nil && src.Network != nil:
			s = &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: src.Network.Network, PortGroup: src.Network.PortGroup}}
		case src != nil && src.Bridge != nil:
			s = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: src.Bridge.Bridge}}
		case src != nil && src.User != nil:
			s = &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}}
		default:
			f.drop("dropped <interface type='%s'>: only network, bridge and user interfaces are restored", setField(src))
			continue
		}
		if in.Script != nil || in.DownScript != nil || in.Target != nil || in.Backend != nil || (in.ROM != nil && in.ROM.File != nil) {
			f.drop("interface: dropped its script, tap device, backend or ROM file")
		}
		nic := libvirtxml.DomainInterface{Source: s, Model: in.Model, Boot: in.Boot, VLan: in.VLan, VirtualPort: in.VirtualPort,
			FilterRef: in.FilterRef, Bandwidth: in.Bandwidth, Link: in.Link, MTU: in.MTU, Address: in.Address}
		if in.Driver != nil {
			drv := *in.Driver
			nic.Driver = &drv
		}
		out = append(out, nic)
	}
	d.Interfaces = out
}

// chardevs puts serial ports and consoles on a pty (a file serial is kept
// for the caller to move into the restore's directory) and keeps only the
// guest agent and SPICE channels, on sockets libvirt names itself.
func (f *Filter) chardevs(d *libvirtxml.DomainDeviceList) {
	pty := func(what string, src *libvirtxml.DomainChardevSource) *libvirtxml.DomainChardevSource {
		if src == nil || src.Pty != nil {
			return &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}
		}
		if src.File != nil {
			return &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: src.File.Path}}
		}
		f.change("%s moved to a pty", what)
		return &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}
	}
	for i := range d.Serials {
		s := &d.Serials[i]
		s.Source, s.Protocol, s.Log = pty("<serial>", s.Source), nil, nil
	}
	for i := range d.Consoles {
		c := &d.Consoles[i]
		c.Source, c.Protocol, c.Log, c.TTY = pty("<console>", c.Source), nil, nil, ""
	}
	var chans []libvirtxml.DomainChannel
	for _, c := range d.Channels {
		var name string
		if c.Target != nil && c.Target.VirtIO != nil {
			name = c.Target.VirtIO.Name
		}
		switch {
		case name == "org.qemu.guest_agent.0":
			chans = append(chans, libvirtxml.DomainChannel{Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
				Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: name}}, Address: c.Address})
		case name == "com.redhat.spice.0" && c.Source != nil && c.Source.SpiceVMC != nil:
			chans = append(chans, libvirtxml.DomainChannel{Source: c.Source, Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: name}}, Address: c.Address})
		default:
			f.drop("dropped a <channel> other than the guest agent's or SPICE's (%q)", name)
		}
	}
	d.Channels = chans
}

// graphics keeps VNC and SPICE, listening on loopback only: passwords are
// not saved with a point, so an open console must not reach the network.
func (f *Filter) graphics(d *libvirtxml.DomainDeviceList) {
	loop := []libvirtxml.DomainGraphicListener{{Address: &libvirtxml.DomainGraphicListenerAddress{Address: "127.0.0.1"}}}
	var out []libvirtxml.DomainGraphic
	for _, g := range d.Graphics {
		switch {
		case g.VNC != nil:
			if g.VNC.Passwd != "" {
				f.change("VNC password not restored")
			}
			out = append(out, libvirtxml.DomainGraphic{VNC: &libvirtxml.DomainGraphicVNC{AutoPort: "yes", Keymap: g.VNC.Keymap, SharePolicy: g.VNC.SharePolicy, Listeners: loop}})
		case g.Spice != nil:
			if g.Spice.Passwd != "" {
				f.change("SPICE password not restored")
			}
			out = append(out, libvirtxml.DomainGraphic{Spice: &libvirtxml.DomainGraphicSpice{AutoPort: "yes", Keymap: g.Spice.Keymap, Listeners: loop}})
		default:
			f.drop("dropped <graphics> other than VNC or SPICE")
		}
	}
	if len(out) > 0 {
		f.change("graphics listen on 127.0.0.1 only: set a password before opening them wider")
	}
	d.Graphics = out
}

// setField names the first set pointer field of a libvirtxml union (the
// type of an interface source, of a disk source), lowercased.
func setField(v any) string {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return "none"
		}
		rv = rv.Elem()
	}
	for i := 0; i < rv.NumField(); i++ {
		if f := rv.Field(i); f.Kind() == reflect.Pointer && !f.IsNil() {
			return strings.ToLower(rv.Type().Field(i).Name)
		}
	}
	return "unknown"
}
