package qmp

import (
	"context"
	"fmt"
)

// DirtyBitmap is QEMU's view of one dirty bitmap on a block node.
type DirtyBitmap struct {
	Name        string `json:"name"`
	Count       int64  `json:"count"`       // dirty bytes
	Granularity int64  `json:"granularity"` // bytes per bit
	Recording   bool   `json:"recording"`   // tracks new writes (enabled)
	Busy        bool   `json:"busy"`        // in use by a job or export
	Persistent  bool   `json:"persistent"`  // stored in the qcow2 image
	// Inconsistent is set on a persistent bitmap that was not saved cleanly
	// (QEMU was killed while it was in use): its content cannot be trusted.
	Inconsistent bool `json:"inconsistent"`
}

// BlockNode is one node of QEMU's block graph (query-named-block-nodes).
type BlockNode struct {
	NodeName     string        `json:"node-name"`
	Driver       string        `json:"drv"`
	File         string        `json:"file"`
	ReadOnly     bool          `json:"ro"`
	DirtyBitmaps []DirtyBitmap `json:"dirty-bitmaps"`
	Image        struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
		ClusterSize int64  `json:"cluster-size"`
	} `json:"image"`
}

// BlockDevice is one guest block device (query-block).
type BlockDevice struct {
	Device   string `json:"device"` // legacy drive name; empty with -blockdev
	QdevID   string `json:"qdev"`   // device path, e.g. /machine/peripheral/virtio-disk0/virtio-backend
	Inserted *struct {
		NodeName string `json:"node-name"`
		File     string `json:"file"`
		Driver   string `json:"drv"`
	} `json:"inserted"`
}

// QueryBlockNodes returns every named block node.
func (c *Client) QueryBlockNodes(ctx context.Context) ([]BlockNode, error) {
	var nodes []BlockNode
	err := c.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes)
	return nodes, err
}

// QueryBlockDevices returns the guest's block devices.
func (c *Client) QueryBlockDevices(ctx context.Context) ([]BlockDevice, error) {
	var devs []BlockDevice
	err := c.Execute(ctx, "query-block", nil, &devs)
	return devs, err
}

// BlockNode returns the node named name, or an error wrapping ErrNodeNotFound.
func (c *Client) BlockNode(ctx context.Context, name string) (BlockNode, error) {
	nodes, err := c.QueryBlockNodes(ctx)
	if err != nil {
		return BlockNode{}, err
	}
	for _, n := range nodes {
		if n.NodeName == name {
			return n, nil
		}
	}
	return BlockNode{}, fmt.Errorf("qmp: node %q: %w", name, ErrNodeNotFound)
}

// DeviceNode returns the name of the top node attached to the guest device
// with qdev ID id (e.g. "virtio-disk0", or its full /machine path), or an
// error wrapping ErrDeviceNotFound.
func (c *Client) DeviceNode(ctx context.Context, id string) (string, error) {
	devs, err := c.QueryBlockDevices(ctx)
	if err != nil {
		return "", err
	}
	for _, d := range devs {
		if d.QdevID == id || d.QdevID == "/machine/peripheral/"+id+"/virtio-backend" ||
			d.QdevID == "/machine/peripheral/"+id || d.Device == id {
			if d.Inserted == nil {
				return "", fmt.Errorf("qmp: device %q has no medium: %w", id, ErrNodeNotFound)
			}
			return d.Inserted.NodeName, nil
		}
	}
	return "", fmt.Errorf("qmp: device %q: %w", id, ErrDeviceNotFound)
}

// Bitmaps returns the dirty bitmaps of node.
func (c *Client) Bitmaps(ctx context.Context, node string) ([]DirtyBitmap, error) {
	n, err := c.BlockNode(ctx, node)
	if err != nil {
		return nil, err
	}
	return n.DirtyBitmaps, nil
}

// Bitmap returns the bitmap name of node, or an error wrapping
// ErrNodeNotFound or ErrBitmapNotFound.
func (c *Client) Bitmap(ctx context.Context, node, name string) (DirtyBitmap, error) {
	bms, err := c.Bitmaps(ctx, node)
	if err != nil {
		return DirtyBitmap{}, err
	}
	for _, b := range bms {
		if b.Name == name {
			return b, nil
		}
	}
	return DirtyBitmap{}, fmt.Errorf("qmp: bitmap %q on node %q: %w", name, node, ErrBitmapNotFound)
}

// Action is one action of a QMP transaction.
type Action struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// BitmapOptions are the properties of a new dirty bitmap.
type BitmapOptions struct {
	Persistent  bool  // stored in the qcow2 image, survives restarts
	Granularity int64 // bytes per bit; 0 lets QEMU choose (the cluster size)
	Disabled    bool  // created not recording
}

type bitmapRef struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

type bitmapMerge struct {
	Node    string   `json:"node"`
	Target  string   `json:"target"`
	Bitmaps []string `json:"bitmaps"`
}

type bitmapAdd struct {
	Node        string `json:"node"`
	Name        string `json:"name"`
	Persistent  bool   `json:"persistent,omitempty"`
	Granularity int64  `json:"granularity,omitempty"`
	Disabled    bool   `json:"disabled,omitempty"`
}

// AddBitmap is the action that adds bitmap name to node.
func AddBitmap(node, name string, o BitmapOptions) Action {
	return Action{"block-dirty-bitmap-add", bitmapAdd{node, name, o.Persistent, o.Granularity, o.Disabled}}
}

// RemoveBitmap is the action that removes bitmap name from node.
func RemoveBitmap(node, name string) Action {
	return Action{"block-dirty-bitmap-remove", bitmapRef{node, name}}
}

// ClearBitmap is the action that clears bitmap name of node.
func ClearBitmap(node, name string) Action {
	return Action{"block-dirty-bitmap-clear", bitmapRef{node, name}}
}

// EnableBitmap is the action that makes bitmap name of node record writes.
func EnableBitmap(node, name string) Action {
	return Action{"block-dirty-bitmap-enable", bitmapRef{node, name}}
}

// DisableBitmap is the action that stops bitmap name of node recording.
func DisableBitmap(node, name string) Action {
	return Action{"block-dirty-bitmap-disable", bitmapRef{node, name}}
}

// MergeBitmaps is the action that ORs the bitmaps sources of node into target.
func MergeBitmaps(node, target string, sources ...string) Action {
	return Action{"block-dirty-bitmap-merge", bitmapMerge{node, target, append([]string(nil), sources...)}}
}

// Transaction runs actions atomically: all take effect or none does.
func (c *Client) Transaction(ctx context.Context, actions ...Action) error {
	if len(actions) == 0 {
		return nil
	}
	if err := c.checkActions(ctx, actions); err != nil {
		return err
	}
	return c.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil)
}

// checkActions turns the common mistakes (unknown node, unknown bitmap) into
// typed errors that name what is wrong before QEMU sees the transaction.
func (c *Client) checkActions(ctx context.Context, actions []Action) error {
	nodes, err := c.QueryBlockNodes(ctx)
	if err != nil {
		return err
	}
	byName := make(map[string]map[string]bool, len(nodes))
	for _, n := range nodes {
		bms := make(map[string]bool, len(n.DirtyBitmaps))
		for _, b := range n.DirtyBitmaps {
			bms[b.Name] = true
		}
		byName[n.NodeName] = bms
	}
	for _, a := range actions {
		var node, added, removed string
		var need []string
		switch d := a.Data.(type) {
		case bitmapAdd:
			node, added = d.Node, d.Name
		case bitmapRef:
			node, need = d.Node, []string{d.Name}
			if a.Type == "block-dirty-bitmap-remove" {
				removed = d.Name
			}
		case bitmapMerge:
			node, need = d.Node, append([]string{d.Target}, d.Bitmaps...)
		default:
			continue
		}
		bms, ok := byName[node]
		if !ok {
			return fmt.Errorf("qmp: %s: node %q: %w", a.Type, node, ErrNodeNotFound)
		}
		for _, n := range need {
			if !bms[n] {
				return fmt.Errorf("qmp: %s: bitmap %q on node %q: %w", a.Type, n, node, ErrBitmapNotFound)
			}
		}
		// Later actions see the effect of earlier ones.
		if added != "" {
			bms[added] = true
		}
		if removed != "" {
			delete(bms, removed)
		}
	}
	return nil
}
