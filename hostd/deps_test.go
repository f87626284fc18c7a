package hostd

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/virtkeep/virtkeep/"

// goList runs go list over the module with format f, one line per package.
func goList(t *testing.T, args ...string) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list"}, args...)...).Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	res := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, rest, _ := strings.Cut(line, " ")
		if rest != "" {
			res[pkg] = strings.Split(rest, ",")
		} else {
			res[pkg] = nil
		}
	}
	return res
}

// operations are the packages that do the host's work.
var operations = []string{mod + "hostd/backup", mod + "hostd/chain", mod + "hostd/restore", mod + "hostd/exports", mod + "hostd/mount",
	mod + "hostd/boot", mod + "hostd/recovery", mod + "hostd/domain", mod + "hostd/virt", mod + "hostd/statedir"}

func std(p string) bool { return !strings.Contains(strings.Split(p, "/")[0], ".") }

// TestImportRules holds the dependency rules of docs/ARCHITECTURE.md:
// dependencies point down, the CLI holds only the service interface, and
// only cmd/ reads configuration.
func TestImportRules(t *testing.T) {
	direct := goList(t, "-f", `{{.ImportPath}} {{join .Imports ","}}`, mod+"...")
	deps := goList(t, "-f", `{{.ImportPath}} {{join .Deps ","}}`, mod+"...")
	if len(deps) < 20 || len(deps[mod+"cmd/virtkeep"]) == 0 {
		t.Fatalf("go list found %d packages", len(deps))
	}
	internal := func(p string) string { return strings.TrimPrefix(p, mod) }
	// only: every (transitive) dependency of pkg inside the module is
	// allowed, and outside it only the standard library and extra.
	only := func(pkg string, allowed []string, extra ...string) {
		for _, d := range deps[mod+pkg] {
			switch {
			case std(d):
			case strings.HasPrefix(d, mod):
				if !slices.Contains(allowed, internal(d)) {
					t.Errorf("%s depends on %s", pkg, internal(d))
				}
			case !slices.ContainsFunc(extra, func(e string) bool { return strings.HasPrefix(d, e) }):
				t.Errorf("%s depends on %s", pkg, d)
			}
		}
	}
	only("hostd/api", nil)
	only("hostd/client", []string{"hostd/api"})
	only("hostd/apiserver", []string{"hostd/api"})
	only("hostd/jobs", []string{"hostd/api"})
	only("hostd/schedule", nil)
	only("hostd/catalog", []string{"hostd/api"}, "github.com/mattn/go-sqlite3")
	// Policies are data: no libvirt, no operation.
	only("hostd/policy", []string{"hostd/schedule", "target", "target/secret"}, "github.com/klauspost/compress", "golang.org/x/crypto", "golang.org/x/sys")
	// Credentials are a leaf: what carries one needs no repository.
	only("target/secret", nil)
	only("hostd/notify", []string{"hostd/api", "target/secret"})
	only("hostd/metrics", []string{"hostd/api", "hostd/catalog"}, "github.com/mattn/go-sqlite3", "github.com/prometheus/", "github.com/beorn7/perks",
		"github.com/cespare/xxhash", "github.com/munnerz/goautoneg", "google.golang.org/protobuf", "golang.org/x/sys")

	never := func(pkg string, transitive bool, banned ...string) {
		list := direct[mod+pkg]
		if transitive {
			list = deps[mod+pkg]
		}
		for _, d := range list {
			for _, b := range banned {
				if d == b || strings.HasPrefix(d, b+"/") || (strings.HasSuffix(b, "/") && strings.HasPrefix(d, b)) {
					t.Errorf("%s imports %s", pkg, d)
				}
			}
		}
	}
	// The CLI: flags, output and exit codes over api.Service.
	never("cmd/virtkeep", false, append([]string{"libvirt.org", mod + "nbd", mod + "target", mod + "qmp", mod + "guestagent", mod + "bitmap"}, operations...)...)
	// Leaves pull in nothing above them.
	for pkg := range deps {
		p := internal(pkg)
		if p == pkg {
			continue
		}
		switch {
		case strings.HasPrefix(p, "target"), p == "nbd", p == "bitmap", p == "hostd/layout":
			never(p, true, append([]string{"libvirt.org", "github.com/digitalocean/go-qemu", mod + "qmp", mod + "guestagent", mod + "hostd/service", mod + "hostd/api"}, operations...)...)
		case slices.Contains(operations, pkg):
			// Operations know nothing of jobs, the catalog or the API.
			never(p, true, mod+"hostd/api", mod+"hostd/jobs", mod+"hostd/catalog", mod+"hostd/apiserver", mod+"hostd/service", mod+"hostd/daemon", mod+"hostd/client")
		case p == "hostd/service":
			never(p, true, mod+"hostd/apiserver", mod+"hostd/client", mod+"hostd/daemon")
		}
		// Only cmd/ reads configuration; tests alone use testenv.
		if !strings.HasPrefix(p, "cmd/") {
			never(p, true, "github.com/spf13/viper")
		}
		if !strings.HasPrefix(p, "testenv") && p != "hostd/fixture" && p != "hostd/fixture/hostile" {
			never(p, true, mod+"testenv", mod+"hostd/fixture", mod+"hostd/fixture/hostile")
		}
	}
}
