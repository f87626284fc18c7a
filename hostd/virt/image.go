package virt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// ImageInfo is what qemu-img says of an image.
type ImageInfo struct {
	VirtualSize    int64 `json:"virtual-size"`
	ClusterSize    int64 `json:"cluster-size"`
	FormatSpecific struct {
		Data struct {
			Compat          string `json:"compat"`
			CompressionType string `json:"compression-type"`
			LazyRefcounts   bool   `json:"lazy-refcounts"`
			ExtendedL2      bool   `json:"extended-l2"`
			Bitmaps         []struct {
				Name  string   `json:"name"`
				Flags []string `json:"flags"`
			} `json:"bitmaps"`
		} `json:"data"`
	} `json:"format-specific"`
}

// ReadImageInfo runs qemu-img info on an image that may be in use.
func ReadImageInfo(ctx context.Context, path, format string) (*ImageInfo, error) {
	args := []string{"info", "-U", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	out, err := exec.CommandContext(ctx, "qemu-img", append(args, path)...).Output()
	if err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", path, CmdErr(err))
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return &info, nil
}

// QemuImg runs qemu-img with args.
func QemuImg(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Qcow2Details records what a restore needs to recreate a qcow2 image
// (the options qemu-img create takes); nil when it cannot be read.
func Qcow2Details(path string) map[string]any {
	info, err := ReadImageInfo(context.Background(), path, "qcow2")
	if err != nil {
		return nil
	}
	d := info.FormatSpecific.Data
	return map[string]any{"cluster_size": info.ClusterSize, "compat": d.Compat, "compression_type": d.CompressionType,
		"lazy_refcounts": d.LazyRefcounts, "extended_l2": d.ExtendedL2}
}

// CmdErr adds a failed command's standard error to its error.
func CmdErr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%v: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}
