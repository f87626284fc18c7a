package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/virtkeep/virtkeep/hostd/api"
)

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// terminal returns standard error when it is a terminal and output is
// not JSON: progress goes there, and nowhere otherwise.
func (a *app) terminal() *os.File {
	if a.json {
		return nil
	}
	if f, ok := a.errw.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return f
	}
	return nil
}

// progressLine is one terminal line of a job's progress: each disk's
// share, the rate and the time left.
func progressLine(j api.Job) string {
	var b strings.Builder
	b.WriteString("\r\033[K")
	for _, d := range j.Progress.Disks {
		fmt.Fprintf(&b, "%s %3.0f%% of %s  ", d.Disk, 100*float64(d.Done)/float64(max(d.Total, 1)), human(d.Total))
	}
	if p := j.Progress; p.Rate > 0 {
		fmt.Fprintf(&b, "%s/s", human(int64(p.Rate)))
		if p.ETASeconds >= 1 {
			fmt.Fprintf(&b, ", %s left", (time.Duration(p.ETASeconds) * time.Second).String())
		}
	}
	return b.String()
}

// terminalPassphrase asks for a key file's passphrase on the terminal.
func terminalPassphrase(target, keyFile string) ([]byte, error) {
	return readPassphrase(fmt.Sprintf("Passphrase for %s (target %s): ", keyFile, target), false)
}
