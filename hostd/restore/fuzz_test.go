package restore

import (
	"strings"
	"testing"
)

// FuzzQcow2Options: no option a repository holds reaches qemu-img with a
// comma, a path or a second key.
func FuzzQcow2Options(f *testing.F) {
	f.Add("1.1", float64(65536), "zstd")
	f.Add("1.1,data_file=/etc/x", float64(512), "zlib")
	f.Fuzz(func(t *testing.T, compat string, cluster float64, comp string) {
		opts, err := qcow2Options(map[string]any{"compat": compat, "cluster_size": cluster, "compression_type": comp})
		if err != nil {
			return
		}
		for _, o := range opts {
			if strings.Count(o, "=") != 1 || strings.ContainsAny(o, ",/ ") {
				t.Fatalf("option %q", o)
			}
		}
	})
}
