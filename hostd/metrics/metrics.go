// Package metrics exports virtkeepd's state to Prometheus: counters and
// histograms fed by every job that ends (Observe), and gauges read from
// the catalog and the job engine at each scrape. Names follow Prometheus'
// conventions (virtkeep_ prefix, base units, _total for counters); the
// list is in docs/CLI.md.
package metrics

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/catalog"
)

// Source is what the gauges are read from at a scrape.
type Source interface {
	Running() []api.Job
	// LibvirtUp reports whether libvirt answered at the last check.
	LibvirtUp() bool
	PointStats(ctx context.Context) ([]catalog.PointStat, error)
}

// Metrics is the registry and its instruments.
type Metrics struct {
	reg      *prometheus.Registry
	jobs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	read     *prometheus.CounterVec
	stored   *prometheus.CounterVec
	dedup    *prometheus.CounterVec
	copied   *prometheus.CounterVec
	freeze   prometheus.Histogram
	verifyKO *prometheus.CounterVec
	repoSize *prometheus.GaugeVec
}

// New makes the registry and the instruments Observe feeds; Watch adds
// the gauges.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.jobs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "virtkeep_jobs_total",
		Help: "Jobs that ended, by kind and result (succeeded, failed, cancelled)."}, []string{"kind", "result"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "virtkeep_job_duration_seconds",
		Help: "How long jobs ran, by kind.", Buckets: prometheus.ExponentialBuckets(1, 4, 9)}, []string{"kind"})
	m.read = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "virtkeep_backup_read_bytes_total",
		Help: "Bytes backups read from disks, by target."}, []string{"target"})
	m.stored = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "virtkeep_backup_stored_bytes_total",
		Help: "Bytes of new objects backups stored, by target."}, []string{"target"})
	m.dedup = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "virtkeep_backup_deduplicated_bytes_total",
		Help: "Bytes backups read but did not have to store (deduplicated or compressed away), by target."}, []string{"target"})
	m.copied = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "virtkeep_copy_stored_bytes_total",
		Help: "Bytes copies stored in their destination, by destination target."}, []string{"target"})
	m.freeze = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "virtkeep_freeze_duration_seconds",
		Help: "How long guests were frozen for a backup.", Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}})
	m.verifyKO = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "virtkeep_verify_failures_total",
		Help: "Verify jobs that found damage, by target (all: several)."}, []string{"target"})
	m.repoSize = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "virtkeep_repository_size_bytes",
		Help: "Size of a target's chunks, index objects and blobs at its last garbage collection."}, []string{"target"})
	m.reg.MustRegister(m.jobs, m.duration, m.read, m.stored, m.dedup, m.copied, m.freeze, m.verifyKO, m.repoSize,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Watch adds the gauges src is read for at each scrape (once).
func (m *Metrics) Watch(src Source) { m.reg.MustRegister(&gauges{src: src}) }

// Observe counts a job that ended.
func (m *Metrics) Observe(j api.Job) {
	m.jobs.WithLabelValues(j.Kind, string(j.State)).Inc()
	if !j.Started.IsZero() && !j.Ended.IsZero() {
		m.duration.WithLabelValues(j.Kind).Observe(j.Ended.Sub(j.Started).Seconds())
	}
	res := j.Result
	switch {
	case res == nil:
	case j.Kind == api.KindBackup && res.Point != nil && j.State == api.Succeeded:
		var read, stored int64
		for _, d := range res.Point.Disks {
			read += d.BytesRead
			stored += d.BytesStored
		}
		m.read.WithLabelValues(j.Target).Add(float64(read))
		m.stored.WithLabelValues(j.Target).Add(float64(stored))
		m.dedup.WithLabelValues(j.Target).Add(float64(max(0, read-stored)))
		if res.Point.FreezeMS > 0 {
			m.freeze.Observe(float64(res.Point.FreezeMS) / 1000)
		}
	case j.Kind == api.KindCopy:
		for _, c := range res.Copies {
			m.copied.WithLabelValues(c.To).Add(float64(c.BytesStored))
		}
	case j.Kind == api.KindGC:
		for t, g := range res.GC {
			m.repoSize.WithLabelValues(t).Set(float64(g.BytesKept))
		}
	}
	if j.Kind == api.KindVerify && j.State == api.Failed && j.ErrorCode != api.CodeUnavailable {
		t := j.Target
		if t == "" {
			t = "all"
		}
		m.verifyKO.WithLabelValues(t).Inc()
	}
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// gauges are read at each scrape.
type gauges struct{ src Source }

var (
	descLast = prometheus.NewDesc("virtkeep_last_backup_timestamp_seconds",
		"Time of a domain's newest point in a target (a successful backup or copy).", []string{"domain", "target"}, nil)
	descPoints  = prometheus.NewDesc("virtkeep_points", "Points a target holds, per domain.", []string{"domain", "target"}, nil)
	descDamage  = prometheus.NewDesc("virtkeep_points_damaged", "Points verification found damaged, per domain and target.", []string{"domain", "target"}, nil)
	descJobs    = prometheus.NewDesc("virtkeep_jobs", "Jobs queued or running now, by state.", []string{"state"}, nil)
	descLibvirt = prometheus.NewDesc("virtkeep_libvirt_up", "1 when libvirt answered virtkeepd's last check (every 2 s), 0 while it is being reconnected.", nil, nil)
)

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLast, descPoints, descDamage, descJobs, descLibvirt} {
		ch <- d
	}
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	up := 0.0
	if g.src.LibvirtUp() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descLibvirt, prometheus.GaugeValue, up)
	states := map[api.JobState]int{api.Queued: 0, api.Running: 0}
	for _, j := range g.src.Running() {
		states[j.State]++
	}
	for s, n := range states {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(n), string(s))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stats, err := g.src.PointStats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descPoints, err)
		return
	}
	for _, s := range stats {
		ch <- prometheus.MustNewConstMetric(descLast, prometheus.GaugeValue, float64(s.Last.UnixNano())/1e9, s.Domain, s.Target)
		ch <- prometheus.MustNewConstMetric(descPoints, prometheus.GaugeValue, float64(s.Points), s.Domain, s.Target)
		ch <- prometheus.MustNewConstMetric(descDamage, prometheus.GaugeValue, float64(s.Damaged), s.Domain, s.Target)
	}
}

// ListenConfig is where /metrics is served.
type ListenConfig struct {
	Addr string
	// TLS, when set, serves HTTPS; Token, when set, is the bearer token
	// every scrape must send.
	TLS   *tls.Config
	Token string
	// GID is the group whose members may scrape a loopback listener
	// without a token, besides root (-1: root only).
	GID int
	Log *slog.Logger
}

// ErrExposed is returned for a listener off loopback without TLS and a token.
var ErrExposed = errors.New("a metrics listener off loopback needs TLS and a bearer token")

// Serve serves /metrics on c.Addr until ctx is done.
func (m *Metrics) Serve(ctx context.Context, c ListenConfig) error {
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) && (c.TLS == nil || c.Token == "") {
		return fmt.Errorf("%s: %w", c.Addr, ErrExposed)
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return err
	}
	if c.TLS != nil {
		ln = tls.NewListener(ln, c.TLS)
	}
	mux := http.NewServeMux()
	h := bearer(c.Token, m.Handler())
	if c.Token == "" {
		h = localOnly(c.GID, h)
	}
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second,
		MaxHeaderBytes: 16 << 10}
	var once sync.Once
	stop := func() { once.Do(func() { _ = srv.Close() }) }
	go func() { <-ctx.Done(); stop() }()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// bearer lets through requests with the token (any, when it is empty).
func bearer(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="virtkeep"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
