// Package mem is an in-memory repository backend for tests.
package mem
