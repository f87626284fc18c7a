package config

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/policy"
	"github.com/virtkeep/virtkeep/hostd/schedule"
	"github.com/virtkeep/virtkeep/target"
)

// PolicyConfig is one entry of policies:.
type PolicyConfig struct {
	Name               string            `mapstructure:"name"`
	Domains            []string          `mapstructure:"domains"`
	OptIn              bool              `mapstructure:"opt_in"`
	Schedule           []string          `mapstructure:"schedule"`
	TimeZone           string            `mapstructure:"time_zone"`
	Jitter             string            `mapstructure:"jitter"`
	Level              string            `mapstructure:"level"`
	Full               string            `mapstructure:"full"`
	Consistency        string            `mapstructure:"consistency"`
	RequireConsistency bool              `mapstructure:"require_consistency"`
	FreezeTimeout      string            `mapstructure:"freeze_timeout"`
	Disks              []string          `mapstructure:"disks"`
	Exclude            []string          `mapstructure:"exclude"`
	Targets            []string          `mapstructure:"targets"`
	CopyTo             []string          `mapstructure:"copy_to"`
	Retention          []RetentionConfig `mapstructure:"retention"`
	Hooks              HooksConfig       `mapstructure:"hooks"`
	Concurrency        int               `mapstructure:"concurrency"`
}

// RetentionConfig is one entry of a policy's retention:, for one target
// or (no target) for each of the policy's targets with no entry of its own.
type RetentionConfig struct {
	Target      string `mapstructure:"target"`
	KeepLast    int    `mapstructure:"keep_last"`
	KeepHourly  int    `mapstructure:"keep_hourly"`
	KeepDaily   int    `mapstructure:"keep_daily"`
	KeepWeekly  int    `mapstructure:"keep_weekly"`
	KeepMonthly int    `mapstructure:"keep_monthly"`
	KeepYearly  int    `mapstructure:"keep_yearly"`
	KeepWithin  string `mapstructure:"keep_within"`
}

// HooksConfig are commands run in the guest (consistency: app).
type HooksConfig struct {
	PreFreeze []HookConfig `mapstructure:"pre_freeze"`
	PostThaw  []HookConfig `mapstructure:"post_thaw"`
}

// HookConfig is one in-guest command.
type HookConfig struct {
	Path    string   `mapstructure:"path"`
	Args    []string `mapstructure:"args"`
	Timeout string   `mapstructure:"timeout"`
}

// NotifyConfig says whom to tell about jobs.
type NotifyConfig struct {
	Webhook WebhookConfig `mapstructure:"webhook"`
	Mail    MailConfig    `mapstructure:"mail"`
}

// WebhookConfig posts a JSON summary of each job to URL.
type WebhookConfig struct {
	URL       string   `mapstructure:"url"`
	On        []string `mapstructure:"on"`
	Retries   int      `mapstructure:"retries"`
	TokenFile string   `mapstructure:"token_file"`
	Timeout   string   `mapstructure:"timeout"`
}

// MailConfig sends mail through the host's sendmail.
type MailConfig struct {
	To       []string `mapstructure:"to"`
	From     string   `mapstructure:"from"`
	Sendmail string   `mapstructure:"sendmail"`
	On       []string `mapstructure:"on"`
}

// MetricsConfig is the opt-in Prometheus listener.
type MetricsConfig struct {
	Listen      string `mapstructure:"listen"`
	TLSCertFile string `mapstructure:"tls_cert_file"`
	TLSKeyFile  string `mapstructure:"tls_key_file"`
	TokenFile   string `mapstructure:"token_file"`
}

// problems collects every error of a file, each with its key and, where
// the file shows it, its line.
type problems struct {
	path  string
	lines *lineIndex
	list  []string
}

func (p *problems) add(key string, format string, args ...any) {
	where := key
	if n := p.lines.line(key); n > 0 {
		where = fmt.Sprintf("%s (line %d)", key, n)
	}
	p.list = append(p.list, fmt.Sprintf("config file %s: %s: %s", p.path, where, fmt.Sprintf(format, args...)))
}

func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &Error{strings.Join(p.list, "\n")}
}

var levels = []string{chain.LevelAuto, chain.LevelFull, chain.LevelInc, chain.LevelDiff}
var consistencies = []string{"crash", "fs", "app"}

// checkPolicies checks policies: and makes their typed forms.
func (c *Config) checkPolicies(p *problems) {
	targets := map[string]bool{}
	for _, t := range c.Targets {
		targets[t.Name] = true
	}
	seen := map[string]int{}
	literal := map[string]string{} // domain name -> policy naming it
	for i := range c.Policies {
		pc := &c.Policies[i]
		key := fmt.Sprintf("policies[%d]", i)
		if !nameRe.MatchString(pc.Name) {
			p.add(key+".name", "%q: use 1-32 letters, digits, - or _", pc.Name)
		} else if j, ok := seen[pc.Name]; ok {
			p.add(key+".name", "%q is the name of policies[%d] too", pc.Name, j)
		}
		seen[pc.Name] = i
		for _, d := range pc.Domains {
			if _, err := path.Match(d, ""); err != nil || d == "" || strings.ContainsAny(d, "/\x00") {
				p.add(key+".domains", "%q: want a domain name or a shell pattern (web-*, *)", d)
				continue
			}
			if other, ok := literal[d]; ok && other != pc.Name {
				p.add(key+".domains", "domain %s is in two policies, %s and %s: a domain may be in one", d, other, pc.Name)
			}
			literal[d] = pc.Name
		}
		if len(pc.Domains) == 0 && !pc.OptIn {
			p.add(key+".domains", "policy %s selects no domain: list names or patterns, or set opt_in", pc.Name)
		}
		pol := &policy.Policy{Name: pc.Name, Domains: pc.Domains, OptIn: pc.OptIn, Level: pc.Level, Consistency: pc.Consistency,
			RequireConsistency: pc.RequireConsistency, Disks: pc.Disks, Exclude: pc.Exclude, Targets: pc.Targets, CopyTo: pc.CopyTo,
			Concurrency: pc.Concurrency, Retention: map[string]target.Retention{}}
		loc := pc.checkTimes(p, key, pol, c.TimeZone)
		pc.checkLevels(p, key, pol, loc)
		pc.checkTargets(p, key, targets, pol)
		pc.checkHooks(p, key, pol)
		c.policies = append(c.policies, pol)
	}
}

func location(name string) (*time.Location, error) {
	if name == "" {
		return time.Local, nil
	}
	return time.LoadLocation(name)
}

func (pc *PolicyConfig) checkTimes(p *problems, key string, pol *policy.Policy, defaultTZ string) *time.Location {
	tz := pc.TimeZone
	if tz == "" {
		tz = defaultTZ
	}
	loc, err := location(tz)
	if err != nil {
		if pc.TimeZone != "" {
			p.add(key+".time_zone", "%q: want an IANA time zone such as Europe/Berlin or UTC", pc.TimeZone)
		}
		loc = time.UTC
	}
	if len(pc.Schedule) == 0 {
		p.add(key+".schedule", "policy %s has no schedule: add a cron expression such as \"0 2 * * *\"", pc.Name)
	}
	for j, s := range pc.Schedule {
		cr, err := schedule.ParseCron(s, loc.String())
		if err != nil {
			p.add(fmt.Sprintf("%s.schedule[%d]", key, j), "%v", err)
			continue
		}
		pol.Schedules = append(pol.Schedules, cr)
	}
	pol.Jitter = pc.duration(p, key+".jitter", pc.Jitter, 0, 24*time.Hour)
	pol.FreezeTimeout = pc.duration(p, key+".freeze_timeout", pc.FreezeTimeout, 0, time.Hour)
	return loc
}

// duration parses a duration setting ("" is 0) in [0, most].
func (pc *PolicyConfig) duration(p *problems, key, s string, least, most time.Duration) time.Duration {
	if s == "" {
		return 0
	}
	d, err := policy.ParseDuration(s)
	if err != nil {
		p.add(key, "%v", err)
		return 0
	}
	if d < least || d > most {
		p.add(key, "%s: want %s to %s", s, policy.FormatDuration(least), policy.FormatDuration(most))
	}
	return d
}

func (pc *PolicyConfig) checkLevels(p *problems, key string, pol *policy.Policy, loc *time.Location) {
	if pc.Level != "" && !slices.Contains(levels, pc.Level) {
		p.add(key+".level", "%q: want auto, full, inc or diff", pc.Level)
	}
	switch pc.Full {
	case "", "never":
	case "week", "month":
		pol.Full = policy.Full{Period: pc.Full, Location: loc}
	default:
		d, err := policy.ParseDuration(pc.Full)
		if err != nil || d < time.Hour {
			p.add(key+".full", "%q: want week, month, never or a duration of at least 1h such as 7d", pc.Full)
		}
		pol.Full = policy.Full{Every: d, Location: loc}
	}
	if pc.Consistency != "" && !slices.Contains(consistencies, pc.Consistency) {
		p.add(key+".consistency", "%q: want crash, fs or app", pc.Consistency)
	}
	if pc.Concurrency < 0 || pc.Concurrency > 64 {
		p.add(key+".concurrency", "%d: want 1-64", pc.Concurrency)
	}
	for _, d := range append(append([]string(nil), pc.Disks...), pc.Exclude...) {
		if !diskRe.MatchString(d) {
			p.add(key+".disks", "%q: want a disk name such as vda", d)
		}
	}
}

var diskRe = nameRe

func (pc *PolicyConfig) checkTargets(p *problems, key string, targets map[string]bool, pol *policy.Policy) {
	if len(pc.Targets) == 0 {
		p.add(key+".targets", "policy %s names no target to back up into", pc.Name)
	}
	all := append(append([]string(nil), pc.Targets...), pc.CopyTo...)
	for j, t := range all {
		k := fmt.Sprintf("%s.targets[%d]", key, j)
		if j >= len(pc.Targets) {
			k = fmt.Sprintf("%s.copy_to[%d]", key, j-len(pc.Targets))
		}
		if !targets[t] {
			p.add(k, "no target %q under targets:", t)
		} else if slices.Index(all, t) != j {
			p.add(k, "target %s is named twice", t)
		}
	}
	var def *target.Retention
	for j, rc := range pc.Retention {
		k := fmt.Sprintf("%s.retention[%d]", key, j)
		r := target.Retention{KeepLast: rc.KeepLast, KeepHourly: rc.KeepHourly, KeepDaily: rc.KeepDaily, KeepWeekly: rc.KeepWeekly,
			KeepMonthly: rc.KeepMonthly, KeepYearly: rc.KeepYearly}
		r.KeepWithin = pc.duration(p, k+".keep_within", rc.KeepWithin, time.Minute, 100*365*24*time.Hour)
		switch {
		case r.Empty():
			p.add(k, "no rule: set keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly or keep_within (prune would remove every point)")
		case min(r.KeepLast, r.KeepHourly, r.KeepDaily, r.KeepWeekly, r.KeepMonthly, r.KeepYearly) < 0:
			p.add(k, "counts must not be negative")
		}
		switch {
		case rc.Target == "":
			if def != nil {
				p.add(k, "a second entry without target")
			}
			def = &r
		case !slices.Contains(all, rc.Target):
			p.add(k+".target", "%q is none of the policy's targets or copy_to (%s)", rc.Target, strings.Join(all, ", "))
		case pol.Retention[rc.Target] != (target.Retention{}):
			p.add(k+".target", "target %s has a second entry", rc.Target)
		default:
			pol.Retention[rc.Target] = r
		}
	}
	for _, t := range all {
		if _, ok := pol.Retention[t]; !ok && def != nil {
			pol.Retention[t] = *def
		}
	}
}

func (pc *PolicyConfig) checkHooks(p *problems, key string, pol *policy.Policy) {
	if (len(pc.Hooks.PreFreeze) > 0 || len(pc.Hooks.PostThaw) > 0) && pc.Consistency != "app" {
		p.add(key+".hooks", "hooks run with consistency: app only (the policy has %q)", pc.Consistency)
	}
	conv := func(kind string, hs []HookConfig) []policy.Hook {
		var out []policy.Hook
		for j, h := range hs {
			k := fmt.Sprintf("%s.hooks.%s[%d]", key, kind, j)
			if !strings.HasPrefix(h.Path, "/") && !(len(h.Path) > 2 && h.Path[1] == ':') {
				p.add(k+".path", "%q: want an absolute path in the guest", h.Path)
			}
			out = append(out, policy.Hook{Path: h.Path, Args: h.Args, Timeout: pc.duration(p, k+".timeout", h.Timeout, time.Second, time.Hour)})
		}
		return out
	}
	pol.PreFreeze = conv("pre_freeze", pc.Hooks.PreFreeze)
	pol.PostThaw = conv("post_thaw", pc.Hooks.PostThaw)
}

var notifyEvents = []string{"failure", "success"}

func (c *Config) checkNotify(p *problems) {
	w, m := &c.Notify.Webhook, &c.Notify.Mail
	if w.URL != "" {
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			p.add("notify.webhook.url", "%q: want an http or https URL without credentials (token_file holds a bearer token)", w.URL)
		}
		if w.Retries < 0 || w.Retries > 20 {
			p.add("notify.webhook.retries", "%d: want 0-20", w.Retries)
		}
		if w.TokenFile != "" {
			var err error
			if c.webhookToken, err = secretFile(w.TokenFile); err != nil {
				p.add("notify.webhook.token_file", "%v", err)
			}
		}
		if w.Timeout != "" {
			if d, err := time.ParseDuration(w.Timeout); err != nil || d < time.Second || d > 5*time.Minute {
				p.add("notify.webhook.timeout", "%q: want 1s to 5m", w.Timeout)
			}
		}
	} else if w.Retries != 0 || w.TokenFile != "" || len(w.On) > 0 || w.Timeout != "" {
		p.add("notify.webhook", "settings without url")
	}
	checkOn(p, "notify.webhook.on", w.On)
	if len(m.To) > 0 {
		for _, a := range append(append([]string(nil), m.To...), m.From) {
			if a != "" && !mailRe.MatchString(a) {
				p.add("notify.mail", "%q: want an address such as root@example.org", a)
			}
		}
		if m.Sendmail != "" && !filepath.IsAbs(m.Sendmail) {
			p.add("notify.mail.sendmail", "%q: want an absolute path", m.Sendmail)
		}
	} else if m.From != "" || m.Sendmail != "" || len(m.On) > 0 {
		p.add("notify.mail", "settings without to")
	}
	checkOn(p, "notify.mail.on", m.On)
}

func checkOn(p *problems, key string, on []string) {
	for _, e := range on {
		if !slices.Contains(notifyEvents, e) {
			p.add(key, "%q: want failure or success", e)
		}
	}
}

func (c *Config) checkMetrics(p *problems) {
	m := c.Metrics
	if m.Listen == "" {
		if m != (MetricsConfig{}) {
			p.add("metrics", "settings without listen")
		}
		return
	}
	host, port, err := net.SplitHostPort(m.Listen)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
		p.add("metrics.listen", "%q: want host:port such as 127.0.0.1:9469", m.Listen)
		return
	}
	if (m.TLSCertFile == "") != (m.TLSKeyFile == "") {
		p.add("metrics", "tls_cert_file and tls_key_file go together")
	}
	ip := net.ParseIP(host)
	loopback := host == "localhost" || ip != nil && ip.IsLoopback()
	if !loopback && (m.TLSCertFile == "" || m.TokenFile == "") {
		p.add("metrics.listen", "%s is not a loopback address: a listener elsewhere needs tls_cert_file, tls_key_file and token_file", m.Listen)
	}
	if m.TokenFile != "" {
		var err error
		if c.metricsToken, err = secretFile(m.TokenFile); err != nil {
			p.add("metrics.token_file", "%v", err)
		} else if c.metricsToken.Empty() {
			p.add("metrics.token_file", "%s is empty", m.TokenFile)
		}
	}
	if m.TLSCertFile != "" && m.TLSKeyFile != "" {
		cert, err := tls.LoadX509KeyPair(m.TLSCertFile, m.TLSKeyFile)
		if err != nil {
			p.add("metrics.tls_cert_file", "%v", err)
			return
		}
		c.metricsTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
}

// Policies are the configured policies, checked.
func (c *Config) PolicyList() []*policy.Policy { return c.policies }

var mailRe = regexp.MustCompile(`^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+$`)

// DefaultGC is when a target is garbage collected by default: Sundays at 04:00.
const DefaultGC = "0 4 * * 0"

// upkeep is a target's checked gc, verify and limits settings.
type upkeep struct {
	gc, verify *schedule.Cron
	readData   string
	sample     int
	bandwidth  int64
}

func (t *TargetConfig) checkUpkeep(p *problems, key, tz string) {
	loc, err := location(tz)
	if err != nil {
		loc = time.Local
	}
	gc := t.GC
	if gc == "" {
		gc = DefaultGC
	}
	if gc != "never" {
		if t.upkeep.gc, err = schedule.ParseCron(gc, loc.String()); err != nil {
			p.add(key+".gc", "%v", err)
		}
	}
	if t.Verify != "" {
		if t.upkeep.verify, err = schedule.ParseCron(t.Verify, loc.String()); err != nil {
			p.add(key+".verify", "%v", err)
		}
	}
	switch t.VerifyReadData {
	case "", "none", "all", "sample":
		t.upkeep.readData = t.VerifyReadData
	default:
		p.add(key+".verify_read_data", "%q: want none, all or sample", t.VerifyReadData)
	}
	t.upkeep.sample = t.VerifySample
	if t.VerifySample == 0 {
		t.upkeep.sample = 7
	} else if t.VerifySample < 1 || t.VerifySample > 366 {
		p.add(key+".verify_sample", "%d: want 1-366 (days)", t.VerifySample)
	}
	if t.Bandwidth != "" {
		if t.upkeep.bandwidth, err = parseBytes(t.Bandwidth); err != nil || t.upkeep.bandwidth < 64<<10 {
			p.add(key+".bandwidth", "%q: want bytes per second of at least 64KiB, such as 50MiB", t.Bandwidth)
		}
	}
	if t.Requests < 0 || t.Requests > 256 {
		p.add(key+".requests", "%d: want 1-256", t.Requests)
	}
	if t.MaxJobs < 0 || t.MaxJobs > 64 {
		p.add(key+".max_jobs", "%d: want 1-64", t.MaxJobs)
	}
}

// parseBytes reads 1048576, 64KiB, 50MiB, 1GiB, 10MB.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		n      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mul := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mul = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.n
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mul {
		return 0, fmt.Errorf("%q: not a size", s)
	}
	return n * mul, nil
}
