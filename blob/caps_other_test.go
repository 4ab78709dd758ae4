//go:build !linux

package blob

// asUnprivileged cannot drop privileges on this platform.
func asUnprivileged(fn func()) bool { return false }
