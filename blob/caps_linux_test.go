package blob

import (
	"runtime"
	"syscall"
	"unsafe"
)

// asUnprivileged runs fn on an OS thread whose effective capabilities lack
// CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER, so that even root is
// subject to file permissions there. Capabilities are per thread on Linux;
// the thread is locked to fn's goroutine and discarded afterwards. It reports
// false if the capabilities could not be dropped.
func asUnprivileged(fn func()) bool {
	done := make(chan bool)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		type header struct {
			version uint32
			pid     int32
		}
		type data struct{ effective, permitted, inheritable uint32 }
		hdr := header{version: 0x20080522} // _LINUX_CAPABILITY_VERSION_3
		var d [2]data
		if _, _, e := syscall.RawSyscall(syscall.SYS_CAPGET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&d[0])), 0); e != 0 {
			done <- false
			return
		}
		const dacOverride, dacReadSearch, fowner = 1, 2, 3
		d[0].effective &^= 1<<dacOverride | 1<<dacReadSearch | 1<<fowner
		if _, _, e := syscall.RawSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&d[0])), 0); e != 0 {
			done <- false
			return
		}
		fn()
		done <- true
	}()
	return <-done
}
