package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/virtkeep/virtkeep/cmd/internal/config"
	"github.com/virtkeep/virtkeep/hostd/service"
)

// readPassphrase asks on the terminal, twice when confirm is set.
func readPassphrase(prompt string, confirm bool) ([]byte, error) {
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, fmt.Errorf("standard input is not a terminal")
	}
	fmt.Fprint(os.Stderr, prompt)
	p, err := term.ReadPassword(fd)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return nil, err
	}
	if len(p) == 0 {
		return nil, fmt.Errorf("empty passphrase")
	}
	if confirm {
		fmt.Fprint(os.Stderr, "Again: ")
		q, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(p, q) {
			return nil, fmt.Errorf("the passphrases differ")
		}
	}
	return p, nil
}

// newPassphrase is the passphrase for a key file virtkeep writes: from
// file (a secret file), asked for twice with ask, or none.
func newPassphrase(file string, ask bool) ([]byte, error) {
	switch {
	case file != "":
		b, err := config.ReadPassphraseFile(file)
		if err != nil {
			return nil, usageErr("--passphrase-file: %v", err)
		}
		return b, nil
	case ask:
		p, err := readPassphrase("New passphrase: ", true)
		if err != nil {
			return nil, usageErr("--passphrase: %v", err)
		}
		return p, nil
	}
	return nil, nil
}

func newKeyCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Create and export repository keys"}
	cmd.AddCommand(newKeyCreateCmd(a), newKeyExportCmd(a))
	return cmd
}

func newKeyCreateCmd(a *app) *cobra.Command {
	var passFile string
	var ask bool
	cmd := &cobra.Command{
		Use:   "create FILE [--passphrase | --passphrase-file F]",
		Short: "Write a new repository key file (0600), optionally wrapped under a passphrase (Argon2id)",
		Args:  exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			pass, err := newPassphrase(passFile, ask)
			if err != nil {
				return err
			}
			if err := service.CreateKeyFile(args[0], pass); err != nil {
				return err
			}
			fmt.Fprintf(a.errw, "wrote a new key to %s: name it as key_file of a target; keep a copy away from this host (virtkeep key export)\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "wrap the key under the passphrase in this file (0600)")
	cmd.Flags().BoolVar(&ask, "passphrase", false, "wrap the key under a passphrase asked for on the terminal")
	return cmd
}

func newKeyExportCmd(a *app) *cobra.Command {
	var targetName, out, passFile string
	var ask bool
	cmd := &cobra.Command{
		Use:   "export [--target NAME] [--out FILE] [--passphrase | --passphrase-file F]",
		Short: "Export a target's key for safekeeping, checked against its repository",
		Long: `Export writes the key of an encrypted target as a key file (to --out,
created 0600, or to standard output), unwrapped or wrapped under a new
passphrase. It first opens the target's repository with the key, so what
it exports is known to open it. Without the key, nothing in the
repository can be read: keep the export away from this host.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pass, err := newPassphrase(passFile, ask)
			if err != nil {
				return err
			}
			// The key is checked here, in this process: a key file is a
			// file of the host the CLI runs on.
			a.local = true
			if err := a.connect(cmd.Context(), reads); err != nil {
				return err
			}
			defer a.close()
			b, err := a.inproc.ExportKey(cmd.Context(), targetName, out, pass)
			if err != nil {
				return err
			}
			if out != "" {
				fmt.Fprintf(a.errw, "exported the key of target %s to %s\n", targetName, out)
				return nil
			}
			_, err = a.out.Write(b)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&targetName, "target", "", "the target whose key to export (default: the first)")
	f.StringVar(&out, "out", "", "write the key file here (created 0600, never replaced) instead of standard output")
	f.StringVar(&passFile, "passphrase-file", "", "wrap the exported key under the passphrase in this file")
	f.BoolVar(&ask, "passphrase", false, "wrap the exported key under a passphrase asked for on the terminal")
	return cmd
}
