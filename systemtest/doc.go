// Package systemtest holds memcache's system tests: whole clusters (real
// Raft, gossip, sockets, node processes, `memcache up`, PostgreSQL and S3
// when installed) started through internal/testcluster. It has no code
// besides its tests.
package systemtest
