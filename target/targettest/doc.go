// Package targettest is the conformance suite every repository backend must
// pass: object semantics, errors, listing, atomic replacement and concurrent
// writers. A backend that passes it can carry a repository. It also
// commits small points for the tests of the packages that use
// repositories (CommitChunk).
package targettest
