// Package all wires the repository backends together: it opens a target
// from its typed configuration, whatever its kind. New kinds are added here,
// in one explicit switch, not by registration.
package all
