package main

import "github.com/spf13/cobra"

// Argument checks that fail with the usage exit code.

func exactArgs(n int, what string) cobra.PositionalArgs { return rangeArgs(n, n, what) }

func maxArgs(n int, what string) cobra.PositionalArgs { return rangeArgs(0, n, what) }

func minArgs(n int, what string) cobra.PositionalArgs { return rangeArgs(n, -1, what) }

// rangeArgs wants lo to hi arguments (hi < 0: no most).
func rangeArgs(lo, hi int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		switch {
		case lo == hi && len(args) != lo:
			return usageErr("expected %s, got %d arguments", what, len(args))
		case len(args) < lo:
			return usageErr("expected %s, got %d arguments", what, len(args))
		case hi >= 0 && len(args) > hi:
			return usageErr("expected at most %s, got %d arguments", what, len(args))
		}
		return nil
	}
}
