// Package local is the repository backend on a local directory. Objects are
// files; a put writes a temporary file in the same directory and renames it
// into place, so a reader never sees a part of an object. Sync makes
// everything durable with syncfs(2) and fsyncs the directories written.
package local
