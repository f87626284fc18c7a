// Package targettest is the conformance suite every repository backend must
// pass: object semantics, errors, listing, atomic replacement and concurrent
// writers. A backend that passes it can carry a repository.
package targettest
