package service

import (
	"context"
	"fmt"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/target"
)

// Key files are files of the host the CLI runs on, not state of the
// daemon: these run in the CLI's process.

// CreateKeyFile writes a new repository key to path (0600, never
// replacing a file), wrapped under passphrase when it is not empty.
func CreateKeyFile(path string, passphrase []byte) error {
	k, err := target.NewKey()
	if err != nil {
		return err
	}
	return target.WriteKeyFile(path, k, passphrase, target.DefaultKDF)
}

// ExportKey checks the key of target name against its repository, then
// writes it as a key file to out (0600, never replacing a file) or, for
// out "", returns it; it is wrapped under passphrase when that is not
// empty.
func (s *Service) ExportKey(ctx context.Context, name, out string, passphrase []byte) ([]byte, error) {
	t, err := s.target(name)
	if err != nil {
		return nil, err
	}
	if t.Open.KeyFile == "" {
		return nil, api.Errorf(api.CodeBadRequest, "target %s is not encrypted: it has no key_file", t.Name)
	}
	c, err := s.withPassphrase(t)
	if err != nil {
		return nil, err
	}
	k, err := target.ReadKeyFile(c.KeyFile, c.Passphrase)
	if err != nil {
		return nil, coded(err)
	}
	repo, err := s.open(ctx, t, false)
	if err != nil {
		return nil, fmt.Errorf("the key was not checked against the repository: %w", err)
	}
	repo.Close()
	if out != "" {
		return nil, target.WriteKeyFile(out, k, passphrase, target.DefaultKDF)
	}
	return target.MarshalKeyFile(k, passphrase, target.DefaultKDF)
}
