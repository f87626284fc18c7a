// Package mandoc writes a command's manual pages (one per subcommand) and
// its bash, zsh and fish completions from its cobra tree, for the Debian
// package (make deb), through a hidden gen-docs command of each binary.
package mandoc

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// Command is the hidden "gen-docs DIR" command of root: manual pages in
// DIR/man<section>, completions in DIR/completions.
func Command(root *cobra.Command, section string) *cobra.Command {
	return &cobra.Command{
		Use:    "gen-docs DIR",
		Short:  "Write the manual pages and shell completions (for packaging)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return Write(root, section, args[0])
		},
	}
}

// Write writes root's manual pages and completions under dir.
func Write(root *cobra.Command, section, dir string) error {
	man := filepath.Join(dir, "man"+section)
	comp := filepath.Join(dir, "completions")
	for _, d := range []string{man, comp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	root.DisableAutoGenTag = true
	// A fixed date keeps the pages the same from build to build.
	date := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			date = time.Unix(sec, 0).UTC()
		}
	}
	hdr := &doc.GenManHeader{Section: section, Source: "virtkeep", Manual: "virtkeep manual", Date: &date}
	if err := doc.GenManTree(root, hdr, man); err != nil {
		return err
	}
	name := root.Name()
	for file, gen := range map[string]func(string) error{
		name + ".bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
		"_" + name:     root.GenZshCompletionFile,
		name + ".fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
	} {
		if err := gen(filepath.Join(comp, file)); err != nil {
			return err
		}
	}
	return nil
}
