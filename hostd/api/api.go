// Package api holds virtkeep's service interface and its wire types: every
// operation the CLI offers, with the request and response types that
// travel as JSON over the daemon's unix socket (docs/API.md). It imports
// only the standard library; hostd/service implements Service in process
// and hostd/client implements it over the socket.
package api

import (
	"context"
	"time"
)

// Version is the API's version, the first element of every path.
const Version = "v1"

// Service is every operation virtkeep offers. Operations that run longer
// than a moment return a Job at once; Watch and Log follow it.
type Service interface {
	Version(ctx context.Context) (VersionInfo, error)

	// Points lists the points the catalog holds, oldest first.
	Points(ctx context.Context, r ListRequest) ([]Point, error)
	// Point resolves an ID, DOMAIN@latest or DOMAIN@<RFC 3339 time>.
	Point(ctx context.Context, r PointRequest) (Point, error)

	Backup(ctx context.Context, r BackupRequest) (Job, error)
	Restore(ctx context.Context, r RestoreRequest) (Job, error)
	Export(ctx context.Context, r ExportRequest) (Job, error)
	Verify(ctx context.Context, r VerifyRequest) (Job, error)
	RebuildCatalog(ctx context.Context, r RebuildRequest) (Job, error)

	Jobs(ctx context.Context, r JobsRequest) ([]Job, error)
	Job(ctx context.Context, id string) (Job, error)
	CancelJob(ctx context.Context, id string) (Job, error)
	// Watch calls fn with the job now and after every change (progress
	// at most a few times a second) until it has ended, fn fails or ctx
	// is done. The last call sees the job's final state.
	Watch(ctx context.Context, id string, fn func(Job) error) error
	// Log calls fn with the job's log lines; with follow, it waits for
	// more until the job has ended.
	Log(ctx context.Context, id string, follow bool, fn func(LogLine) error) error

	Mount(ctx context.Context, r MountRequest) (Session, error)
	Serve(ctx context.Context, r ServeRequest) (Session, error)
	Boot(ctx context.Context, r BootRequest) (Session, error)
	Sessions(ctx context.Context) ([]Session, error)
	// EndSession undoes a session: by ID, or a mount by its directory.
	EndSession(ctx context.Context, r EndSessionRequest) error

	// Policies lists the configured policies, each with its domains, next
	// run and last result.
	Policies(ctx context.Context) ([]PolicyInfo, error)
	// RunPolicy starts a policy's run now (all its domains, or one).
	RunPolicy(ctx context.Context, r RunRequest) (Job, error)
	// Prune removes, per the policies' retention, the points no rule
	// keeps; DryRun only says what would go and why.
	Prune(ctx context.Context, r PruneRequest) (Job, error)
	// Protect (un)marks a point protected: prune never removes it.
	Protect(ctx context.Context, r ProtectRequest) error
	// Copy copies points to another target.
	Copy(ctx context.Context, r CopyRequest) (Job, error)
	// GC reclaims the space of objects no point uses.
	GC(ctx context.Context, r GCRequest) (Job, error)
}

// PolicyInfo is one policy as `virtkeep policies` shows it.
type PolicyInfo struct {
	Name      string   `json:"name"`
	Schedules []string `json:"schedules"`
	// Domains are the libvirt domains the policy selects now.
	Domains []string `json:"domains"`
	// Problems are domains the policy cannot back up (in two policies,
	// named but not defined).
	Problems []string  `json:"problems,omitempty"`
	Level    string    `json:"level"`
	Full     string    `json:"full"`
	Targets  []string  `json:"targets"`
	CopyTo   []string  `json:"copy_to,omitempty"`
	Next     time.Time `json:"next,omitzero"`
	// Last is the policy's last run (absent: none yet).
	Last *Job `json:"last,omitempty"`
}

// RunRequest starts a policy's run.
type RunRequest struct {
	Policy string `json:"policy"`
	Domain string `json:"domain,omitempty"`
	// Scheduled is set by the daemon's scheduler; Missed counts the runs
	// due while it was down that this one stands for.
	Scheduled bool `json:"scheduled,omitempty"`
	Missed    int  `json:"missed,omitempty"`
}

// PruneRequest prunes one target or all, one domain or all.
type PruneRequest struct {
	Target string `json:"target,omitempty"`
	Domain string `json:"domain,omitempty"` // a name or a UUID
	// Hosts are other hosts whose points are pruned too ("*": every
	// host's); a host prunes only its own points by default.
	Hosts  []string `json:"hosts,omitempty"`
	DryRun bool     `json:"dry_run,omitempty"`
}

// ProtectRequest protects or unprotects one point.
type ProtectRequest struct {
	Point  string `json:"point"`
	Target string `json:"target,omitempty"`
	Off    bool   `json:"off,omitempty"`
}

// CopyRequest copies points from one target (From, default: where each
// is found) to another.
type CopyRequest struct {
	Points []string `json:"points"`
	From   string   `json:"from,omitempty"`
	To     string   `json:"to"`
}

// GCRequest garbage-collects one target or all.
type GCRequest struct {
	Target string `json:"target,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
}

// Decision is what prune decided for one point.
type Decision struct {
	Target     string    `json:"target"`
	Point      string    `json:"point"`
	Domain     string    `json:"domain"`
	DomainUUID string    `json:"domain_uuid,omitempty"`
	Host       string    `json:"host,omitempty"` // the host that wrote the point
	Time       time.Time `json:"time"`
	Keep       bool      `json:"keep"`
	Reasons    []string  `json:"reasons,omitempty"` // the rules that keep it
	Policy     string    `json:"policy,omitempty"`
}

// CopyReport is what copying one point did.
type CopyReport struct {
	Point       string `json:"point"`
	From        string `json:"from"`
	To          string `json:"to"`
	Chunks      int64  `json:"chunks"`
	ChunksNew   int64  `json:"chunks_new"`
	BytesStored int64  `json:"bytes_stored"`
	Existed     bool   `json:"existed,omitempty"`
}

// GCReport is what GC did on one target.
type GCReport struct {
	Deleted    int   `json:"deleted"`
	BytesFreed int64 `json:"bytes_freed"`
	KeptYoung  int   `json:"kept_young"`
	BytesKept  int64 `json:"bytes_kept"` // the repository's size after GC
	// Repacked counts packs whose live chunks were written into new packs
	// before they were deleted.
	Repacked int `json:"repacked"`
}

// RunReport is what a policy run did per domain: "ok", or why not.
type RunReport struct {
	Domains map[string]string `json:"domains"`
	Jobs    []string          `json:"jobs"`
}

// VersionInfo says who answers.
type VersionInfo struct {
	Version string `json:"version"`
	API     string `json:"api"`
	// Mode is "daemon" when virtkeepd answers, "local" in process.
	Mode string `json:"mode"`
	PID  int    `json:"pid"`
}

// Point is one backup point as list and info show it.
type Point struct {
	ID          string      `json:"id"`
	Domain      string      `json:"domain"`
	DomainUUID  string      `json:"domain_uuid"`
	Target      string      `json:"target"`
	Time        time.Time   `json:"time"`
	Level       string      `json:"level"`
	Consistency string      `json:"consistency"`
	FreezeMS    int64       `json:"freeze_ms"`
	Checkpoint  string      `json:"checkpoint"`
	Parent      string      `json:"parent"`
	Disks       []PointDisk `json:"disks"`
	// Damaged is what verification found wrong with the point (empty: no
	// damage found). A damaged point is never the base of an incremental.
	Damaged string `json:"damaged,omitempty"`
}

// PointDisk is one disk of a point.
type PointDisk struct {
	Name        string `json:"name"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual_size"`
	BytesRead   int64  `json:"bytes_read"`
	BytesStored int64  `json:"bytes_stored"`
	Checkpoint  string `json:"checkpoint,omitempty"`
}

// ListRequest filters Points; empty fields match everything.
type ListRequest struct {
	Domain string `json:"domain,omitempty"` // name or UUID
	Target string `json:"target,omitempty"`
}

// PointRequest names one point, optionally in one target.
type PointRequest struct {
	Point  string `json:"point"`
	Target string `json:"target,omitempty"`
}

// BackupRequest asks for a backup of one domain into one target.
type BackupRequest struct {
	Domain             string   `json:"domain"`
	Target             string   `json:"target,omitempty"` // default: the first configured
	Level              string   `json:"level,omitempty"`  // full, inc, diff, auto (default)
	Consistency        string   `json:"consistency,omitempty"`
	RequireConsistency bool     `json:"require_consistency,omitempty"`
	FreezeTimeoutMS    int64    `json:"freeze_timeout_ms,omitempty"` // default 10000
	Disks              []string `json:"disks,omitempty"`
	Exclude            []string `json:"exclude,omitempty"`
}

// RestoreRequest restores disks to a directory (To), a whole domain under
// a new name (As), or a shut-off domain over itself (InPlace with Force).
type RestoreRequest struct {
	Point   string   `json:"point"`
	Target  string   `json:"target,omitempty"`
	To      string   `json:"to,omitempty"`
	As      string   `json:"as,omitempty"`
	Format  string   `json:"format,omitempty"` // qcow2, raw (default: each disk's own)
	Disks   []string `json:"disks,omitempty"`
	Force   bool     `json:"force,omitempty"`
	Verify  bool     `json:"verify,omitempty"`
	InPlace bool     `json:"in_place,omitempty"`
	Strict  bool     `json:"strict,omitempty"`
}

// ExportRequest writes one disk of a point to a file or block device.
type ExportRequest struct {
	Point  string `json:"point"`
	Target string `json:"target,omitempty"`
	Disk   string `json:"disk"`
	Format string `json:"format"`
	Output string `json:"output"`
	Force  bool   `json:"force,omitempty"`
}

// VerifyRequest checks one point, or (All) every target's repository.
type VerifyRequest struct {
	Point    string `json:"point,omitempty"`
	Target   string `json:"target,omitempty"`
	All      bool   `json:"all,omitempty"`
	ReadData bool   `json:"read_data,omitempty"`
	// Sample, with All and ReadData, reads one part in Sample of the
	// chunks, another each day, so that Sample days read them all.
	Sample int `json:"sample,omitempty"`
}

// RebuildRequest recreates the catalog's points from the targets (one, or
// all when Target is empty).
type RebuildRequest struct {
	Target string `json:"target,omitempty"`
}

// JobsRequest filters Jobs: by default the queued and running jobs and
// those that ended in the last 24 hours; All gives every job kept.
type JobsRequest struct {
	All    bool   `json:"all,omitempty"`
	Domain string `json:"domain,omitempty"`
	// Since, when set, keeps only the jobs created after it (a busy host's
	// day of jobs is thousands: a caller following its own asks for those).
	Since time.Time `json:"since,omitzero"`
}

// JobState is where a job is in its life.
type JobState string

const (
	Queued    JobState = "queued"
	Running   JobState = "running"
	Succeeded JobState = "succeeded"
	Failed    JobState = "failed"
	Cancelled JobState = "cancelled"
)

// Ended reports whether s is final.
func (s JobState) Ended() bool { return s == Succeeded || s == Failed || s == Cancelled }

// Job kinds.
const (
	KindBackup  = "backup"
	KindRestore = "restore"
	KindExport  = "export"
	KindVerify  = "verify"
	KindRebuild = "catalog-rebuild"
	KindPolicy  = "policy"
	KindCopy    = "copy"
	KindPrune   = "prune"
	KindGC      = "gc"
)

// Job is one long operation.
type Job struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Domain  string    `json:"domain,omitempty"`
	Target  string    `json:"target,omitempty"`
	State   JobState  `json:"state"`
	Created time.Time `json:"created"`
	Started time.Time `json:"started,omitzero"`
	Ended   time.Time `json:"ended,omitzero"`
	// Progress is the latest progress; Total is 0 until it is known.
	Progress Progress   `json:"progress"`
	Result   *JobResult `json:"result,omitempty"`
	Error    string     `json:"error,omitempty"`
	// ErrorCode classifies Error (see Code); empty when the job did not fail.
	ErrorCode Code `json:"error_code,omitempty"`
	// Attempts counts the runs of a job retried after a transient error.
	Attempts int `json:"attempts,omitempty"`
	// Policy is the policy a job runs for; Parent the policy run that
	// started it.
	Policy string `json:"policy,omitempty"`
	Parent string `json:"parent,omitempty"`
}

// Progress of a job: bytes done of total, the rate over the last seconds,
// the estimated seconds left, and the same per disk.
type Progress struct {
	Done       int64          `json:"done"`
	Total      int64          `json:"total"`
	Rate       float64        `json:"rate"` // bytes per second
	ETASeconds float64        `json:"eta_seconds"`
	Disks      []DiskProgress `json:"disks,omitempty"`
}

// DiskProgress is one disk's part of a job's progress.
type DiskProgress struct {
	Disk  string `json:"disk"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
}

// JobResult is what a job made; which fields are set depends on its kind.
type JobResult struct {
	Point    *Point   `json:"point,omitempty"`    // backup
	Files    []string `json:"files,omitempty"`    // restore --to, export
	Domain   string   `json:"domain,omitempty"`   // restore --as, --in-place
	UUID     string   `json:"uuid,omitempty"`     // restore --as
	Dir      string   `json:"dir,omitempty"`      // restore --as
	Warnings []string `json:"warnings,omitempty"` // what went less well than asked
	// FullReasons says, per disk, why an incremental read a disk in full.
	FullReasons map[string]string `json:"full_reasons,omitempty"`
	// Checks is verify --all's report per target.
	Checks map[string]CheckReport `json:"checks,omitempty"`
	// Points counts the points a catalog rebuild found, per target.
	Points map[string]int `json:"points,omitempty"`
	// Decisions are prune's, per point.
	Decisions []Decision `json:"decisions,omitempty"`
	// Copies are copy's, per point.
	Copies []CopyReport `json:"copies,omitempty"`
	// GC is gc's per target.
	GC map[string]GCReport `json:"gc,omitempty"`
	// Run is a policy run's.
	Run *RunReport `json:"run,omitempty"`
}

// CheckReport is one target's verify report.
type CheckReport struct {
	OK      bool   `json:"ok"`
	Summary string `json:"summary"`
	// Report is the repository's own report (its fields are documented
	// with target.CheckReport).
	Report any `json:"report"`
}

// LogLine is one line of a job's log.
type LogLine struct {
	Job     string            `json:"job"`
	Seq     int64             `json:"seq"`
	Time    time.Time         `json:"time"`
	Level   string            `json:"level"`
	Message string            `json:"message"`
	Attrs   map[string]string `json:"attrs,omitempty"`
}

// MountRequest mounts a point's disk's filesystems under Dir.
type MountRequest struct {
	Point  string `json:"point"`
	Target string `json:"target,omitempty"`
	Disk   string `json:"disk,omitempty"` // default: the first
	Dir    string `json:"dir"`
}

// ServeRequest serves a point's disks read-only over NBD on a unix socket
// (one is made under state_dir when Socket is empty) or a loopback TCP
// address (Listen).
type ServeRequest struct {
	Point  string `json:"point"`
	Target string `json:"target,omitempty"`
	Disk   string `json:"disk,omitempty"`
	Socket string `json:"socket,omitempty"`
	Listen string `json:"listen,omitempty"`
}

// BootRequest starts a new domain from a point (instant recovery); with
// Migrate its disks then move to local files.
type BootRequest struct {
	Point   string `json:"point"`
	Target  string `json:"target,omitempty"`
	Name    string `json:"name"`
	Dir     string `json:"dir,omitempty"`
	Migrate bool   `json:"migrate,omitempty"`
	Strict  bool   `json:"strict,omitempty"`
}

// Session kinds.
const (
	SessionMount = "mount"
	SessionServe = "serve"
	SessionBoot  = "boot"
)

// Session is something lasting made from a point: a mount, an NBD server,
// a domain booted from a backup. Whoever made it holds it (the daemon, or
// a CLI process: Holder) until it is ended.
type Session struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Point   string    `json:"point"`
	Target  string    `json:"target"`
	Created time.Time `json:"created"`
	Holder  string    `json:"holder"` // "virtkeepd" or "pid N"
	Dir     string    `json:"dir,omitempty"`
	URIs    []string  `json:"uris,omitempty"`
	Exports []string  `json:"exports,omitempty"`
	Mounts  []Mounted `json:"mounts,omitempty"`
	Domain  string    `json:"domain,omitempty"` // boot
	UUID    string    `json:"uuid,omitempty"`   // boot
	// Migrated is set for a boot whose disks moved to local files: it no
	// longer needs the backup, and ending the session leaves the domain.
	Migrated bool `json:"migrated,omitempty"`
}

// Mounted is one filesystem of a mount session.
type Mounted struct {
	Device string `json:"device"`
	Type   string `json:"type"`
	Path   string `json:"path"`
}

// EndSessionRequest names a session by ID, or a mount by its directory.
type EndSessionRequest struct {
	ID  string `json:"id,omitempty"`
	Dir string `json:"dir,omitempty"`
}
