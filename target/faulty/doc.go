// Package faulty wraps a repository backend and injects failures, for tests
// that check that every error reaches the caller and nothing half-written is
// taken for complete.
package faulty
