// Package hosts holds memcache's multi-host system tests: every role a real
// `memcache` process on its own host, a Linux network namespace of
// internal/netns, all on one bridge. It has no code besides its tests.
package hosts
