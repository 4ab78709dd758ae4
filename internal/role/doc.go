// Package role starts memcache's roles — manager replica, cache node,
// frontend — from their configs; main, up and the tests all start roles
// through it.
//
// Each Start… function wires one role from its packages (cluster, scaler,
// metrics, web; node and the pool watch; frontend, blob and keyindex) in a straight
// sequence and returns a handle whose Close stops what it started in the
// reverse order and waits for every goroutine it started. A role's config
// carries every knob, with its default documented beside it; there is no
// package-level state, so one process may run several roles (as `memcache
// up` and the system tests do).
package role
