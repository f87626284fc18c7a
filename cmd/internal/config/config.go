// Package config reads virtkeep's one configuration file
// (/etc/virtkeep/virtkeep.yaml) for the CLI and the daemon alike: strictly
// (an unknown key is an error that names it), with VIRTKEEP_* environment
// overrides of the top-level settings, and with every secret file read and
// checked. With no file at the default path it gives the zero
// configuration: one local target under /var/lib/virtkeep/repo. Only cmd/
// reads configuration; the rest of virtkeep takes the typed structs.
package config

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/viper"

	"github.com/virtkeep/virtkeep/hostd/policy"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/all"
	"github.com/virtkeep/virtkeep/target/s3"
	"github.com/virtkeep/virtkeep/target/secret"
	"github.com/virtkeep/virtkeep/target/sftp"
)

// DefaultPath is where the configuration file is looked for.
const DefaultPath = "/etc/virtkeep/virtkeep.yaml"

// ErrInvalid is wrapped by every error about the configuration (exit 2).
var ErrInvalid = errors.New("invalid configuration")

// Error is a configuration error; errors.Is(err, ErrInvalid) holds.
type Error struct{ msg string }

func (e *Error) Error() string        { return e.msg }
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func usageErr(format string, args ...any) error { return &Error{fmt.Sprintf(format, args...)} }

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

	// Socket is the daemon's API socket; SocketGroup may use it besides root.
	Socket      string `mapstructure:"socket"`
	SocketGroup string `mapstructure:"socket_group"`
	// MaxJobs and MaxJobsPerTarget bound the jobs running at once.
	MaxJobs          int `mapstructure:"max_jobs"`
	MaxJobsPerTarget int `mapstructure:"max_jobs_per_target"`
	// ShutdownTimeout is how long SIGTERM waits for cancelled jobs to
	// undo what they started.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// ReconcileInterval is how often the daemon compares the catalog with
	// each target (points added or removed by another host).
	ReconcileInterval time.Duration `mapstructure:"reconcile_interval"`
	// JobRetention is how long ended jobs and their logs are kept in the
	// catalog: "90d" (days and weeks allowed).
	JobRetention string `mapstructure:"job_retention"`
	jobRetention time.Duration
	// TimeZone is the zone of the targets' gc and verify schedules and
	// the default of the policies' (default: the host's).
	TimeZone string         `mapstructure:"time_zone"`
	Policies []PolicyConfig `mapstructure:"policies"`
	Notify   NotifyConfig   `mapstructure:"notify"`
	Metrics  MetricsConfig  `mapstructure:"metrics"`

	policies     []*policy.Policy
	webhookToken secret.Value
	metricsToken secret.Value
	metricsTLS   *tls.Config

	// Path is the file read; ZeroConfig is set when there was none and the
	// defaults are used.
	Path       string `mapstructure:"-"`
	ZeroConfig bool   `mapstructure:"-"`
}

// TargetConfig is one entry of targets:.
type TargetConfig struct {
	Name        string `mapstructure:"name"`
	Kind        string `mapstructure:"kind"`
	Path        string `mapstructure:"path"`
	Compression string `mapstructure:"compression"`
	// PackSize is the pack size of a repository created here: 1MiB to
	// 256MiB (default 8MiB), or "none" for an object per chunk.
	PackSize string `mapstructure:"pack_size"`
	KeyFile  string `mapstructure:"key_file"`
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

	// upkeep, any kind
	GC             string `mapstructure:"gc"`               // cron (default weekly)
	Verify         string `mapstructure:"verify"`           // cron (default none)
	VerifyReadData string `mapstructure:"verify_read_data"` // none, all, sample
	VerifySample   int    `mapstructure:"verify_sample"`    // days a sample covers everything in
	Bandwidth      string `mapstructure:"bandwidth"`        // bytes per second: 50MiB
	Requests       int    `mapstructure:"requests"`         // requests in flight at once
	MaxJobs        int    `mapstructure:"max_jobs"`         // jobs on the target at once

	secretKey  secret.Value // read from SecretKeyFile
	passphrase secret.Value // read from PassphraseFile
	upkeep     upkeep
}

// ZeroTarget is the target of the zero configuration.
func ZeroTarget() TargetConfig {
	return TargetConfig{Name: "local", Kind: "local", Path: "/var/lib/virtkeep/repo"}
}

// kindSettings lists the settings each kind takes besides name, kind,
// compression and key_file; any other set setting is an error.
var kindSettings = map[string][]string{
	"local": {"path"},
	"sftp":  {"host", "port", "user", "path", "identity_file", "known_hosts_file", "connections"},
	"s3":    {"endpoint", "bucket", "prefix", "region", "access_key", "secret_key_file", "insecure", "ca_file", "path_style"},
}

// commonSettings are the settings of every kind.
var commonSettings = []string{"name", "kind", "compression", "pack_size", "key_file", "passphrase_file",
	"gc", "verify", "verify_read_data", "verify_sample", "bandwidth", "requests", "max_jobs"}

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
func (t *TargetConfig) check() error {
	allowed, ok := kindSettings[t.Kind]
	if !ok {
		if t.Kind == "" {
			return usageErr("(%s): no kind (local, sftp or s3)", t.Name)
		}
		return usageErr("(%s): kind %q is not supported (local, sftp or s3)", t.Name, t.Kind)
	}
	for _, s := range t.set() {
		if !slices.Contains(allowed, s) {
			return usageErr("(%s): %s is not a setting of kind %s", t.Name, s, t.Kind)
		}
	}
	need := func(name, v string) error {
		if v == "" {
			return usageErr("(%s): kind %s needs %s", t.Name, t.Kind, name)
		}
		return nil
	}
	if t.PassphraseFile != "" {
		if t.KeyFile == "" {
			return usageErr("(%s): passphrase_file without key_file", t.Name)
		}
		b, err := ReadPassphraseFile(t.PassphraseFile)
		if err != nil {
			return usageErr("(%s): passphrase_file: %v", t.Name, err)
		}
		t.passphrase = secret.Value(b)
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
			return usageErr("(%s): port %d is not a TCP port", t.Name, t.Port)
		}
		if t.Connections < 0 || t.Connections > 16 {
			return usageErr("(%s): connections %d: want 1-16", t.Name, t.Connections)
		}
	case "s3":
		for _, n := range [][2]string{{"endpoint", t.Endpoint}, {"bucket", t.Bucket}, {"access_key", t.AccessKey}, {"secret_key_file", t.SecretKeyFile}} {
			if err := need(n[0], n[1]); err != nil {
				return err
			}
		}
		if strings.Contains(t.Endpoint, "://") || strings.Contains(t.Endpoint, "/") {
			return usageErr("(%s): endpoint %q: want host[:port] (insecure: true for plain HTTP)", t.Name, t.Endpoint)
		}
		var err error
		if t.secretKey, err = secretFile(t.SecretKeyFile); err != nil {
			return usageErr("(%s): secret_key_file: %v", t.Name, err)
		}
		if t.secretKey.Empty() {
			return usageErr("(%s): secret_key_file %s is empty", t.Name, t.SecretKeyFile)
		}
	}
	return nil
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// defaults are the top-level settings' defaults; each can be overridden
// by VIRTKEEP_<KEY> in the environment (VIRTKEEP_STATE_DIR, ...).
var defaults = map[string]any{
	"version":             1,
	"state_dir":           "/var/lib/virtkeep",
	"libvirt_uri":         "qemu:///system",
	"socket":              "/run/virtkeep/virtkeepd.sock",
	"socket_group":        "virtkeep",
	"max_jobs":            2,
	"max_jobs_per_target": 1,
	"shutdown_timeout":    "90s",
	"reconcile_interval":  "10m",
	"job_retention":       "90d",
}

// Load reads and checks the configuration file at path. Every error names
// the file and the setting that is wrong. A missing file is an error,
// unless explicit is false (the default path, no --config): then the zero
// configuration is returned, with ZeroConfig set.
func Load(path string, explicit bool) (*Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	for k, d := range defaults {
		v.SetDefault(k, d)
	}
	v.SetEnvPrefix("VIRTKEEP")
	v.AutomaticEnv()
	zero := false
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && !explicit {
		zero = true
	} else {
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			var nf viper.ConfigFileNotFoundError
			if errors.As(err, &nf) || errors.Is(err, os.ErrNotExist) {
				return nil, usageErr("config file %s does not exist (--config)", path)
			}
			return nil, usageErr("config file %s: %v", path, err)
		}
	}
	p := &problems{path: path}
	if !zero {
		raw, _ := os.ReadFile(path)
		p.lines = newLineIndex(raw)
	}
	var c Config
	if err := v.UnmarshalExact(&c); err != nil {
		// Name each unknown or malformed key, then check the rest too.
		decodeProblems(p, err)
		c = Config{}
		if err := v.Unmarshal(&c); err != nil {
			return nil, p.err()
		}
	}
	c.Path, c.ZeroConfig = path, zero
	if zero {
		c.Targets = []TargetConfig{ZeroTarget()}
	}
	c.check(p)
	if err := p.err(); err != nil {
		return nil, err
	}
	return &c, nil
}

// check checks everything, adding each problem to p.
func (c *Config) check(p *problems) {
	c.checkDaemon(p)
	if c.Version != 1 {
		p.add("version", "%d is not supported (1)", c.Version)
	}
	if c.StateDir == "" {
		p.add("state_dir", "empty")
	}
	if _, err := location(c.TimeZone); err != nil {
		p.add("time_zone", "%q: want an IANA time zone such as Europe/Berlin or UTC", c.TimeZone)
	}
	for _, d := range c.BootFileDirs {
		if !filepath.IsAbs(d) || filepath.Clean(d) == "/" {
			p.add("boot_file_dirs", "%q: want an absolute directory other than /", d)
		}
	}
	if len(c.Targets) == 0 {
		p.add("targets", "no targets: add one under targets:")
	}
	seen := map[string]bool{}
	for i := range c.Targets {
		t := &c.Targets[i]
		key := fmt.Sprintf("targets[%d]", i)
		if !nameRe.MatchString(t.Name) {
			p.add(key+".name", "%q: use 1-32 letters, digits, - or _", t.Name)
		} else if seen[t.Name] {
			p.add(key+".name", "%q is used twice", t.Name)
		}
		seen[t.Name] = true
		if err := t.check(); err != nil {
			p.add(key, "%v", err)
		}
		switch t.Compression {
		case "", "zstd", "none":
		default:
			p.add(key+".compression", "%q: want zstd or none", t.Compression)
		}
		if _, err := t.packSize(); err != nil {
			p.add(key+".pack_size", "%v", err)
		}
		t.checkUpkeep(p, key, c.TimeZone)
	}
	c.checkPolicies(p)
	c.checkNotify(p)
	c.checkMetrics(p)
}

var (
	invalidKeysRe = regexp.MustCompile(`^'([^']*)' has invalid keys: (.*)$`)
	keyErrRe      = regexp.MustCompile(`^'([^']*)' (.*)$`)
)

// decodeProblems adds what viper's strict decoding found, key by key. The
// decoder reports only text, so this reads its lines to give each its key
// and line; it decides nothing (the file is invalid either way), and a
// line it does not recognise is shown as it is.
func decodeProblems(p *problems, err error) {
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "* "))
		if m := invalidKeysRe.FindStringSubmatch(line); m != nil {
			for _, k := range strings.Split(m[2], ", ") {
				key := k
				if m[1] != "" {
					key = m[1] + "." + k
				}
				p.add(key, "unknown key")
			}
		} else if m := keyErrRe.FindStringSubmatch(line); m != nil {
			p.add(m[1], "%s", m[2])
		} else if line != "" && !strings.HasPrefix(line, "decoding failed") {
			p.list = append(p.list, fmt.Sprintf("config file %s: %s", p.path, line))
		}
	}
}

func (c *Config) checkDaemon(p *problems) {
	if !filepath.IsAbs(c.Socket) {
		p.add("socket", "%q: want an absolute path", c.Socket)
	}
	if c.MaxJobs < 1 || c.MaxJobs > 64 {
		p.add("max_jobs", "%d: want 1-64", c.MaxJobs)
	}
	if c.MaxJobsPerTarget < 1 || c.MaxJobsPerTarget > 64 {
		p.add("max_jobs_per_target", "%d: want 1-64", c.MaxJobsPerTarget)
	}
	if c.ShutdownTimeout < time.Second {
		p.add("shutdown_timeout", "%s: want at least 1s", c.ShutdownTimeout)
	}
	if c.ReconcileInterval < time.Second {
		p.add("reconcile_interval", "%s: want at least 1s", c.ReconcileInterval)
	}
	var err error
	if c.jobRetention, err = policy.ParseDuration(c.JobRetention); err != nil || c.jobRetention < 24*time.Hour {
		p.add("job_retention", "%q: want a duration of a day or more (90d, 2w)", c.JobRetention)
	}
}

// packSize is pack_size as target.InitOptions takes it.
func (t TargetConfig) packSize() (int, error) {
	switch t.PackSize {
	case "":
		return 0, nil
	case "none":
		return -1, nil
	}
	n, err := parseBytes(t.PackSize)
	if err != nil || n < 1<<20 || n > 256<<20 {
		return 0, fmt.Errorf("%q: want 1MiB to 256MiB, or none (an object per chunk)", t.PackSize)
	}
	return int(n), nil
}

// Open is how target/all opens t's repository. Passphrase is set from
// passphrase_file; without one, a passphrase-protected key needs one
// asked for (the CLI on a terminal).
func (t TargetConfig) Open() all.Config {
	comp := target.Compression(t.Compression)
	if comp == "" {
		comp = target.CompressionZstd
	}
	var pass []byte
	if !t.passphrase.Empty() {
		pass = []byte(t.passphrase.Reveal())
	}
	packs, _ := t.packSize() // checked by Check
	return all.Config{Name: t.Name, Kind: t.Kind, Path: t.Path, Compression: comp, PackSize: packs, KeyFile: t.KeyFile, Passphrase: pass,
		SFTP: sftp.Config{Host: t.Host, Port: t.Port, User: t.User, Path: t.Path, IdentityFile: t.IdentityFile,
			KnownHostsFile: t.KnownHostsFile, Connections: t.Connections},
		S3: s3.Config{Endpoint: t.Endpoint, Bucket: t.Bucket, Prefix: t.Prefix, Region: t.Region, AccessKey: t.AccessKey,
			SecretKey: t.secretKey, Insecure: t.Insecure, CAFile: t.CAFile, PathStyle: t.PathStyle},
	}
}

// secretFile reads a secret file (a key, a token) without the white space
// around its content.
func secretFile(path string) (secret.Value, error) {
	b, err := secret.ReadFile(path)
	return secret.Value(strings.TrimSpace(string(b))), err
}

// ReadPassphraseFile reads a passphrase from a secret file (owned by root,
// no group or other access): its content without the line end, never empty.
func ReadPassphraseFile(path string) ([]byte, error) {
	b, err := secret.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if b = bytes.TrimRight(b, "\r\n"); len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return b, nil
}
