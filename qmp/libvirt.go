package qmp

import (
	"context"
	"fmt"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"libvirt.org/go/libvirt"
)

// LibvirtMonitor is a Monitor over a libvirt domain's QEMU monitor
// (virDomainQemuMonitorCommand). libvirt marks the domain tainted
// (custom-monitor) on first use; virtkeep uses it only for what libvirt has no
// API for, such as reading dirty bitmap state.
type LibvirtMonitor struct {
	dom *libvirt.Domain
}

var _ Monitor = (*LibvirtMonitor)(nil)

// NewLibvirtMonitor returns a monitor for dom. The caller keeps ownership of
// dom and frees it after the monitor's last use.
func NewLibvirtMonitor(dom *libvirt.Domain) *LibvirtMonitor { return &LibvirtMonitor{dom: dom} }

// Connect does nothing: libvirt holds the monitor connection.
func (m *LibvirtMonitor) Connect() error { return nil }

// Disconnect does nothing: the domain belongs to the caller.
func (m *LibvirtMonitor) Disconnect() error { return nil }

// Run passes the command to QEMU through libvirt and returns its reply, error
// replies included.
func (m *LibvirtMonitor) Run(command []byte) ([]byte, error) {
	out, err := m.dom.QemuMonitorCommand(string(command), libvirt.DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
	if err != nil {
		return nil, fmt.Errorf("libvirt monitor command: %w", err)
	}
	return []byte(out), nil
}

// Events is not supported through libvirt's monitor passthrough.
func (m *LibvirtMonitor) Events(context.Context) (<-chan goqmp.Event, error) {
	return nil, goqmp.ErrEventsNotSupported
}
