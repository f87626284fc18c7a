// Command mangen writes virtkeep.yaml(5) from docs/CLI.md's configuration
// and policy sections, so that the manual page and the document never
// disagree (make deb).
//
//	go run ./cmd/internal/mangen docs/CLI.md OUT/man5/virtkeep.yaml.5
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: mangen docs/CLI.md OUT.5")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "mangen:", err)
		os.Exit(1)
	}
}

// sections are the parts of CLI.md the page holds, from each heading to
// the next of its level.
var sections = []string{"## Configuration", "## Policies"}

func run(in, out string) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	doc := string(b)
	var md strings.Builder
	md.WriteString("% virtkeep.yaml\n\n# NAME\n\nvirtkeep.yaml - the configuration of virtkeep and virtkeepd\n\n# SYNOPSIS\n\n/etc/virtkeep/virtkeep.yaml\n\n")
	for _, h := range sections {
		i := strings.Index(doc, "\n"+h)
		if i < 0 {
			return fmt.Errorf("%s has no section %q", in, h)
		}
		rest := doc[i+1:]
		end := strings.Index(rest[len(h):], "\n## ")
		if end >= 0 {
			rest = rest[:len(h)+end+1]
		}
		// One level up: ## becomes #, ### becomes ##.
		rest = strings.ReplaceAll(strings.ReplaceAll(rest, "\n### ", "\n## "), "\n## ", "\n# ")
		rest = "# " + strings.TrimPrefix(rest, "## ")
		rest = strings.ReplaceAll(rest, "<!-- example-config -->\n", "")
		md.WriteString(strings.ToUpper(rest[:strings.Index(rest, "\n")]) + rest[strings.Index(rest, "\n"):] + "\n")
	}
	md.WriteString("# SEE ALSO\n\nvirtkeep(1), virtkeepd(8)\n")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	page := string(md2man.Render([]byte(md.String())))
	// The title line, as cobra's pages have it.
	i := strings.Index(page, ".TH ")
	if i < 0 {
		return fmt.Errorf("no title line in the page md2man made")
	}
	j := i + strings.Index(page[i:], "\n")
	page = page[:i] + `.TH "VIRTKEEP.YAML" "5" "Dec 2026" "virtkeep" "virtkeep manual"` + page[j:]
	return os.WriteFile(out, []byte(page), 0o644)
}
