package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/spf13/viper"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/all"
)

// Config is the virtkeep configuration file (YAML).
type Config struct {
	Version    int            `mapstructure:"version"`
	StateDir   string         `mapstructure:"state_dir"`
	LibvirtURI string         `mapstructure:"libvirt_uri"`
	Targets    []TargetConfig `mapstructure:"targets"`
}

// TargetConfig is one entry of targets:.
type TargetConfig struct {
	Name        string `mapstructure:"name"`
	Kind        string `mapstructure:"kind"`
	Path        string `mapstructure:"path"`
	Compression string `mapstructure:"compression"`
	KeyFile     string `mapstructure:"key_file"`
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// loadConfig reads and checks the configuration file. Every error names the
// file and the setting that is wrong.
func loadConfig(path string) (*Config, error) {
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	v.SetDefault("version", 1)
	v.SetDefault("state_dir", "/var/lib/virtkeep")
	v.SetDefault("libvirt_uri", "qemu:///system")
	if err := v.ReadInConfig(); err != nil {
		var nf viper.ConfigFileNotFoundError
		if errors.As(err, &nf) || errors.Is(err, os.ErrNotExist) {
			return nil, usageErr("config file %s does not exist (--config)", path)
		}
		return nil, usageErr("config file %s: %v", path, err)
	}
	var c Config
	if err := v.UnmarshalExact(&c); err != nil {
		return nil, usageErr("config file %s: %v", path, err)
	}
	if c.Version != 1 {
		return nil, usageErr("config file %s: version %d is not supported (1)", path, c.Version)
	}
	if c.StateDir == "" {
		return nil, usageErr("config file %s: state_dir is empty", path)
	}
	if len(c.Targets) == 0 {
		return nil, usageErr("config file %s: no targets: add one under targets:", path)
	}
	seen := map[string]bool{}
	for i, t := range c.Targets {
		where := fmt.Sprintf("config file %s: targets[%d]", path, i)
		if !nameRe.MatchString(t.Name) {
			return nil, usageErr("%s: name %q: use 1-32 letters, digits, - or _", where, t.Name)
		}
		if seen[t.Name] {
			return nil, usageErr("%s: name %q is used twice", where, t.Name)
		}
		seen[t.Name] = true
		switch t.Kind {
		case "local":
			if t.Path == "" {
				return nil, usageErr("%s (%s): kind local needs a path", where, t.Name)
			}
		case "":
			return nil, usageErr("%s (%s): no kind (local)", where, t.Name)
		default:
			return nil, usageErr("%s (%s): kind %q is not supported (local)", where, t.Name, t.Kind)
		}
		switch t.Compression {
		case "", "zstd", "none":
		default:
			return nil, usageErr("%s (%s): compression %q: want zstd or none", where, t.Name, t.Compression)
		}
	}
	return &c, nil
}

// target returns the named target, or the first one for "".
func (c *Config) target(name string) (TargetConfig, error) {
	if name == "" {
		return c.Targets[0], nil
	}
	var names []string
	for _, t := range c.Targets {
		if t.Name == name {
			return t, nil
		}
		names = append(names, t.Name)
	}
	return TargetConfig{}, notFoundErr("no target %q (configured: %s)", name, strings.Join(names, ", "))
}

func (t TargetConfig) open() all.Config {
	comp := target.Compression(t.Compression)
	if comp == "" {
		comp = target.CompressionZstd
	}
	return all.Config{Name: t.Name, Kind: t.Kind, Path: t.Path, Compression: comp, KeyFile: t.KeyFile}
}
