// Package engine moves disk data between NBD exports and repositories: it
// follows a changed-block plan (bitmap.Map) to read only what changed,
// assembles chunks, and hands them to a target.DiskWriter in order, with a
// bounded number of reads in flight and bounded memory.
package engine
