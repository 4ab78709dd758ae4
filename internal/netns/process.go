package netns

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a long-running process started with Host.Start. Its owner is
// the test: it is stopped when the test ends, if it has not exited.
type Process struct {
	label   string
	cmd     *exec.Cmd
	logPath string
	grace   time.Duration

	exited chan struct{} // closed once the process has exited and been reaped
	err    error         // cmd.Wait's result, set before exited is closed
}

func startProcess(cmd *exec.Cmd, label, logPath string, grace time.Duration) (*Process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		// Killed with the test binary, should it die before its cleanup.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{label: label, cmd: cmd, logPath: logPath, grace: grace, exited: make(chan struct{})}
	// The waiter ends when the process exits; cleanup makes sure it does.
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// String returns the host and program, as in "mc-1a2b3-0/memcache".
func (p *Process) String() string { return p.label }

// LogPath returns the file holding the process's stdout and stderr.
func (p *Process) LogPath() string { return p.logPath }

// Log returns what the process has written so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err returns how the process exited (cmd.Wait's error): valid once Exited
// is closed.
func (p *Process) Err() error {
	<-p.exited
	return p.err
}

// Signal sends sig to the process; signalling one that has exited does
// nothing.
func (p *Process) Signal(sig os.Signal) {
	select {
	case <-p.exited:
	default:
		p.cmd.Process.Signal(sig)
	}
}

// Stop freezes the process (SIGSTOP): it keeps its sockets, which accept
// connections the kernel completes, but answers nothing until Cont.
//
// It returns once every thread of the process is stopped: SIGSTOP takes
// effect asynchronously, and a request sent right after the signal could
// otherwise still be answered by a thread not yet stopped.
func (p *Process) Stop() {
	p.Signal(syscall.SIGSTOP)
	deadline := time.Now().Add(time.Minute)
	for !p.stopped() && time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// stopped reports whether every thread of the process is in the stopped
// state (T in /proc/PID/task/TID/stat).
func (p *Process) stopped() bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.Pid()))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", p.Pid(), task.Name()))
		if err != nil {
			return false
		}
		// pid (comm) STATE ...: comm may hold spaces and parentheses.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		if f := strings.Fields(rest); len(f) == 0 || (f[0] != "T" && f[0] != "t") {
			return false
		}
	}
	return true
}

// Cont resumes a process frozen with Stop (SIGCONT).
func (p *Process) Cont() { p.Signal(syscall.SIGCONT) }

// Kill kills the process (SIGKILL) and waits until it has exited. It fails
// the test if the process does not exit within a minute.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	p.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		t.Fatalf("netns: %s did not exit within a minute of SIGKILL", p.label)
	}
}

// Terminate asks the process to stop (SIGTERM, with SIGCONT in case it is
// stopped), kills it if it has not exited within grace, and returns how it
// exited: nil for a clean exit after SIGTERM.
func (p *Process) Terminate(grace time.Duration) error {
	p.Signal(syscall.SIGTERM)
	p.Signal(syscall.SIGCONT)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.exited:
		return p.err
	case <-timer.C:
	}
	p.Signal(syscall.SIGKILL)
	<-p.exited
	return fmt.Errorf("did not exit within %v of SIGTERM; killed: %w", grace, p.err)
}

// cleanup stops the process if it is still running and, if the test
// failed, logs the end of its log.
func (p *Process) cleanup(t testing.TB) {
	select {
	case <-p.exited:
	default:
		if err := p.Terminate(p.grace); err != nil && !isSignalExit(err) {
			t.Logf("netns: stopping %s: %v", p.label, err)
		}
	}
	if t.Failed() {
		t.Logf("netns: %s (pid %d, %v) log %s ends:\n%s", p.label, p.Pid(), p.err, p.logPath, lastLines(p.Log(), 40))
	}
}

// isSignalExit reports whether err is an exit by SIGTERM: a program without
// a handler for it, stopped as asked.
func isSignalExit(err error) bool {
	ee, ok := err.(*exec.ExitError)
	if !ok {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Spawn starts cmd in the test process's own network namespace as a
// long-running Process, with the lifecycle of Host.StartCmd: its output goes
// to logPath, and when the test ends it gets SIGTERM (and SIGCONT), then
// SIGKILL after grace. It serves the tests that run the same roles on
// loopback addresses where namespaces are unavailable.
func Spawn(t testing.TB, cmd *exec.Cmd, label, logPath string, grace time.Duration) *Process {
	t.Helper()
	p, err := startProcess(cmd, label, logPath, grace)
	if err != nil {
		t.Fatalf("netns: starting %s: %v", label, err)
	}
	t.Cleanup(func() { p.cleanup(t) })
	return p
}
