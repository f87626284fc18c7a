package testenv

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Iterations is how many times a row of the fault matrix runs: n in make
// test, VIRTKEEP_FAULT_ITERATIONS (make reliability) when set.
func Iterations(n int) int {
	if v, err := strconv.Atoi(os.Getenv("VIRTKEEP_FAULT_ITERATIONS")); err == nil && v > 0 {
		return v
	}
	return n
}

// FaultRow records one row of the fault matrix for docs/RELIABILITY.md:
// the fault injected, how many times, what was checked after each, and
// what was lost. Its result (pass or fail) is the test's, taken when the
// test ends. Rows go to VIRTKEEP_RELIABILITY_LOG when it is set.
type FaultRow struct {
	Fault      string
	Iterations int
	Checked    string
	Lost       string // "nothing" unless the test says otherwise
}

// Record writes r when t ends.
func (r *FaultRow) Record(t testing.TB) {
	path := os.Getenv("VIRTKEEP_RELIABILITY_LOG")
	if path == "" {
		return
	}
	t.Cleanup(func() {
		result, lost := "pass", r.Lost
		if t.Failed() {
			result = "FAIL"
		}
		if lost == "" {
			lost = "nothing"
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Errorf("testenv: reliability log: %v", err)
			return
		}
		defer f.Close()
		clean := func(s string) string { return strings.ReplaceAll(s, "|", "/") }
		fmt.Fprintf(f, "| %s | %d | %s | %s | %s | %s |\n", clean(r.Fault), r.Iterations, clean(r.Checked), result, clean(lost), t.Name())
	})
}
