package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/spf13/viper"

	"github.com/virtkeep/virtkeep/hostd/engine"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/all"
	"github.com/virtkeep/virtkeep/target/s3"
	"github.com/virtkeep/virtkeep/target/sftp"
)

// Config is the virtkeep configuration file (YAML).
type Config struct {
	Version    int            `mapstructure:"version"`
	StateDir   string         `mapstructure:"state_dir"`
	LibvirtURI string         `mapstructure:"libvirt_uri"`
	Targets    []TargetConfig `mapstructure:"targets"`
	// BootFileDirs are the directories a restored or booted domain may
	// take firmware, kernels and initrds from, besides the distribution's
	// firmware directories.
	BootFileDirs []string `mapstructure:"boot_file_dirs"`
}

func (c *Config) bootFileDirs() []string {
	return append(append([]string(nil), engine.DefaultBootFileDirs...), c.BootFileDirs...)
}

// TargetConfig is one entry of targets:.
type TargetConfig struct {
	Name        string `mapstructure:"name"`
	Kind        string `mapstructure:"kind"`
	Path        string `mapstructure:"path"`
	Compression string `mapstructure:"compression"`
	KeyFile     string `mapstructure:"key_file"`
	// PassphraseFile holds the passphrase of a passphrase-protected
	// key_file (unattended runs); without it the CLI asks on a terminal.
	PassphraseFile string `mapstructure:"passphrase_file"`

	// sftp
	Host           string `mapstructure:"host"`
	Port           int    `mapstructure:"port"`
	User           string `mapstructure:"user"`
	IdentityFile   string `mapstructure:"identity_file"`
	KnownHostsFile string `mapstructure:"known_hosts_file"`
	Connections    int    `mapstructure:"connections"`

	// s3
	Endpoint      string `mapstructure:"endpoint"`
	Bucket        string `mapstructure:"bucket"`
	Prefix        string `mapstructure:"prefix"`
	Region        string `mapstructure:"region"`
	AccessKey     string `mapstructure:"access_key"`
	SecretKeyFile string `mapstructure:"secret_key_file"`
	Insecure      bool   `mapstructure:"insecure"`
	CAFile        string `mapstructure:"ca_file"`
	PathStyle     bool   `mapstructure:"path_style"`

	secretKey  target.Secret // read from SecretKeyFile
	passphrase target.Secret // read from PassphraseFile
}

// kindSettings lists the settings each kind takes besides name, kind,
// compression and key_file; any other set setting is an error.
var kindSettings = map[string][]string{
	"local": {"path"},
	"sftp":  {"host", "port", "user", "path", "identity_file", "known_hosts_file", "connections"},
	"s3":    {"endpoint", "bucket", "prefix", "region", "access_key", "secret_key_file", "insecure", "ca_file", "path_style"},
}

// commonSettings are the settings of every kind.
var commonSettings = []string{"name", "kind", "compression", "key_file", "passphrase_file"}

// set lists the kind-specific settings t has (fields not left at zero),
// by their names in the file: read off the struct, so a new setting can
// never be missed.
func (t TargetConfig) set() []string {
	var out []string
	v := reflect.ValueOf(t)
	for _, f := range reflect.VisibleFields(v.Type()) {
		name := f.Tag.Get("mapstructure")
		if !f.IsExported() || slices.Contains(commonSettings, name) || v.FieldByIndex(f.Index).IsZero() {
			continue
		}
		out = append(out, name)
	}
	return out
}

// check validates the kind-specific settings of targets[i].
func (t *TargetConfig) check(where string) error {
	allowed, ok := kindSettings[t.Kind]
	if !ok {
		if t.Kind == "" {
			return usageErr("%s (%s): no kind (local, sftp or s3)", where, t.Name)
		}
		return usageErr("%s (%s): kind %q is not supported (local, sftp or s3)", where, t.Name, t.Kind)
	}
	for _, s := range t.set() {
		if !slices.Contains(allowed, s) {
			return usageErr("%s (%s): %s is not a setting of kind %s", where, t.Name, s, t.Kind)
		}
	}
	need := func(name, v string) error {
		if v == "" {
			return usageErr("%s (%s): kind %s needs %s", where, t.Name, t.Kind, name)
		}
		return nil
	}
	if t.PassphraseFile != "" {
		if t.KeyFile == "" {
			return usageErr("%s (%s): passphrase_file without key_file", where, t.Name)
		}
		b, err := readPassphraseFile(t.PassphraseFile)
		if err != nil {
			return usageErr("%s (%s): passphrase_file: %v", where, t.Name, err)
		}
		t.passphrase = target.Secret(b)
	}
	switch t.Kind {
	case "local":
		return need("path", t.Path)
	case "sftp":
		for _, n := range [][2]string{{"host", t.Host}, {"user", t.User}, {"path", t.Path}, {"identity_file", t.IdentityFile}, {"known_hosts_file", t.KnownHostsFile}} {
			if err := need(n[0], n[1]); err != nil {
				return err
			}
		}
		if t.Port < 0 || t.Port > 65535 {
			return usageErr("%s (%s): port %d is not a TCP port", where, t.Name, t.Port)
		}
		if t.Connections < 0 || t.Connections > 16 {
			return usageErr("%s (%s): connections %d: want 1-16", where, t.Name, t.Connections)
		}
	case "s3":
		for _, n := range [][2]string{{"endpoint", t.Endpoint}, {"bucket", t.Bucket}, {"access_key", t.AccessKey}, {"secret_key_file", t.SecretKeyFile}} {
			if err := need(n[0], n[1]); err != nil {
				return err
			}
		}
		if strings.Contains(t.Endpoint, "://") || strings.Contains(t.Endpoint, "/") {
			return usageErr("%s (%s): endpoint %q: want host[:port] (insecure: true for plain HTTP)", where, t.Name, t.Endpoint)
		}
		b, err := target.ReadSecretFile(t.SecretKeyFile)
		if err != nil {
			return usageErr("%s (%s): secret_key_file: %v", where, t.Name, err)
		}
		t.secretKey = target.Secret(strings.TrimSpace(string(b)))
		if t.secretKey.Empty() {
			return usageErr("%s (%s): secret_key_file %s is empty", where, t.Name, t.SecretKeyFile)
		}
	}
	return nil
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
	for _, d := range c.BootFileDirs {
		if !filepath.IsAbs(d) || filepath.Clean(d) == "/" {
			return nil, usageErr("config file %s: boot_file_dirs: %q: want an absolute directory other than /", path, d)
		}
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
		if err := c.Targets[i].check(where); err != nil {
			return nil, err
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
	var pass []byte
	if !t.passphrase.Empty() {
		pass = []byte(t.passphrase.Reveal())
	}
	return all.Config{Name: t.Name, Kind: t.Kind, Path: t.Path, Compression: comp, KeyFile: t.KeyFile, Passphrase: pass,
		SFTP: sftp.Config{Host: t.Host, Port: t.Port, User: t.User, Path: t.Path, IdentityFile: t.IdentityFile,
			KnownHostsFile: t.KnownHostsFile, Connections: t.Connections},
		S3: s3.Config{Endpoint: t.Endpoint, Bucket: t.Bucket, Prefix: t.Prefix, Region: t.Region, AccessKey: t.AccessKey,
			SecretKey: t.secretKey, Insecure: t.Insecure, CAFile: t.CAFile, PathStyle: t.PathStyle},
	}
}
