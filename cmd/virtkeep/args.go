package main

import "github.com/spf13/cobra"

// Argument checks that fail with the usage exit code.

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErr("expected %s, got %d arguments", what, len(args))
		}
		return nil
	}
}

func maxArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > n {
			return usageErr("expected at most %s, got %d arguments", what, len(args))
		}
		return nil
	}
}
