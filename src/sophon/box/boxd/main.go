// boxd: the first process inside every box (its pid 1), a small static program.
//
// It speaks length-prefixed JSON frames with the host on stdin/stdout (see frames.go).
// Every request carries an integer "id" and runs concurrently with the others; every
// reply frame echoes it: "out" frames while an exec runs, then exactly one "done" or
// "error". A frame without an id gets no reply: the only one is "credit", the host's
// go-ahead for more output of a request that asked for flow control with a "window".
//
// No frame the host sends can end boxd: one over the size limit is read and discarded,
// one that is not JSON is dropped, and either is answered with an error when its id
// can be read, so the request fails instead of the box.
//
// It lives on the untrusted side of the boundary: the host validates every frame. It
// makes itself non-dumpable, so workloads, which run under the same uid, cannot ptrace
// it, read its memory, or open its end of the host's pipes through /proc; as pid 1 it
// catches every signal a workload could send it, and reaps every orphan.
//
// The file helper runs under the interpreter named by SOPHON_PYTHON, from helper.py
// beside boxd's own binary.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"unsafe"
)

var reap *reaper

type op func(id int64, req request) (frame, *reqError)

var ops = map[string]op{
	"exec": opExec, "cancel": opCancel, "input": opInput, "pty": opPty,
	"resize": opResize, "procs": opProcs, "ping": opPing,
}

func opPing(id int64, req request) (frame, *reqError) {
	return frame{"pid": os.Getpid()}, nil
}

func answer(id int64, name string, fn op, req request) {
	result, rerr := func() (result frame, rerr *reqError) {
		defer func() { // a bug here must not kill the box
			if p := recover(); p != nil {
				result, rerr = nil, fail("internal", "%v", p)
			}
		}()
		return fn(id, req)
	}()
	if rerr != nil {
		sendError(id, rerr.code, rerr.message)
		return
	}
	result["id"], result["kind"] = id, "done"
	send(result)
}

func makeUndumpable() {
	syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, 0, 0)
}

// handOverDoor listens on the box's own loopback for the egress door and sends the
// listening socket to the host, which accepts from it (the box's network namespace has
// no other way out). Sent before the greeting, so the host finds it waiting; boxd keeps
// no copy, and a failure is sent as text instead, for the host to log.
func handOverDoor() {
	fdText, port := os.Getenv("SOPHON_DOOR_FD"), os.Getenv("SOPHON_DOOR_PORT")
	os.Unsetenv("SOPHON_DOOR_FD")
	os.Unsetenv("SOPHON_DOOR_PORT")
	var channel, portNum int
	if fdText == "" || port == "" {
		return
	}
	if _, err := fmt.Sscan(fdText, &channel); err != nil {
		return
	}
	defer syscall.Close(channel)
	failed := func(err error) {
		syscall.Write(channel, []byte(fmt.Sprintf("boxd could not listen on 127.0.0.1:%s: %v", port, err)))
	}
	if _, err := fmt.Sscan(port, &portNum); err != nil {
		failed(err)
		return
	}
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		failed(err)
		return
	}
	defer syscall.Close(lfd)
	syscall.SetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Port: portNum, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		failed(err)
		return
	}
	if err := syscall.Listen(lfd, 1024); err != nil {
		failed(err)
		return
	}
	if err := syscall.Sendmsg(channel, []byte("door"), syscall.UnixRights(lfd), nil, 0); err != nil {
		failed(err)
	}
}

func main() {
	makeUndumpable()
	runtime.GOMAXPROCS(2) // boxd waits more than it computes
	unkillable()
	if python := os.Getenv("SOPHON_PYTHON"); python != "" {
		self, _ := os.Executable()
		helperArgv = []string{python, "-I", "-S", filepath.Join(filepath.Dir(self), "helper.py")}
	}
	os.Unsetenv("SOPHON_PYTHON")
	reap = newReaper() // its goroutine starts with the first child
	handOverDoor()
	claude := os.Getenv("SOPHON_CLAUDE_LINK")
	os.Unsetenv("SOPHON_CLAUDE_LINK")
	send(frame{"id": 0, "kind": "ready", "pid": os.Getpid()})
	go threadsAhead()
	if claude != "" { // after the greeting, not to slow it; before the first request is read
		linkClaude(claude)
	}
	go scriptDirectory()
	in := bufio.NewReaderSize(os.Stdin, 256*1024)
	for {
		body, err := readFrame(in)
		if err != nil {
			break
		}
		var req request
		if err := json.Unmarshal(body, &req); err != nil {
			var other any
			if json.Unmarshal(body, &other) != nil {
				head := body
				if len(head) > 64 {
					head = head[:64]
				}
				refuse(head, "invalid_frame", "the request is not valid JSON")
			}
			continue // valid JSON, not an object: nobody waits for an answer
		}
		name, _ := req.str("op")
		id, hasID := req.integer("id")
		if name == "credit" && !req.has("id") {
			giveCredit(req) // here, not on a goroutine: it must not wait behind one
			continue
		}
		if !hasID {
			continue
		}
		if helperOps[name] || name == "cancel" && cancelsHelper(req) {
			forward(id, body)
			continue
		}
		fn := ops[name]
		if fn == nil {
			shown := "None"
			if s, ok := req.str("op"); ok {
				shown = pyRepr(s)
			} else if req.has("op") {
				shown = string(req["op"])
			}
			sendError(id, "unknown_op", "unknown op "+shown)
			continue
		}
		if name == "pty" || name == "exec" && req.truthy("stdin") {
			expectInput(id)
		}
		go answer(id, name, fn, req)
	}
	// The host went away. Exiting ends the sandbox: the kernel kills every process left
	// in the pid namespace with its init.
}

func cancelsHelper(req request) bool {
	target, ok := req.integer("target")
	return ok && helperOwns(target)
}

func giveCredit(req request) {
	target, ok := req.integer("target")
	size, ok2 := req.integer("size")
	if !ok || !ok2 || size <= 0 {
		return
	}
	runMu.Lock()
	c := credits[target]
	runMu.Unlock()
	if c != nil {
		c.give(int(size))
	}
}

// unkillable gives the signals that would end boxd (the Go runtime's handlers exit on
// them) their default action back. The kernel never delivers a signal whose action is
// the default to a pid namespace's init from inside it, so no workload's kill ends
// boxd; and a command boxd starts gets the default for each, as it should (an ignored
// signal would stay ignored in every child). The runtime keeps its handlers for the
// signals a fault raises, so a bug in boxd is still a panic it recovers from.
func unkillable() {
	for _, sig := range []syscall.Signal{
		syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGABRT, syscall.SIGTERM,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGALRM,
		syscall.SIGSTKFLT, syscall.SIGVTALRM, syscall.SIGXCPU, syscall.SIGXFSZ,
		syscall.SIGPWR, syscall.SIGSYS, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU,
	} {
		var dfl [4]uint64 // struct sigaction: handler SIG_DFL, no flags, no restorer, no mask
		syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig),
			uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0)
	}
	// And a signal ignored by whatever started the server (the runtime leaves such ones
	// be, glibc's own 32 and 33 too) is not ignored in a box.
	for sig := uintptr(1); sig <= 64; sig++ {
		var now [4]uint64
		if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, sig, 0,
			uintptr(unsafe.Pointer(&now)), 8, 0, 0); e == 0 && now[0] == 1 { // SIG_IGN
			var dfl [4]uint64
			syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, sig, uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0)
		}
	}
}

// threadsAhead makes the runtime start its threads now, while the box is new. The box's
// pids limit counts boxd's threads with its workloads', and the Go runtime ends the
// process when it cannot start a thread it needs: a fork bomb that has taken every pid
// would otherwise end boxd, and the box, as soon as boxd needed one more. Each goroutine
// holds a thread of its own until all have one; then they let go, and the threads wait,
// idle, for the runtime to use them.
func threadsAhead() {
	const threads = 8
	var ready sync.WaitGroup
	release := make(chan struct{})
	ready.Add(threads)
	for i := 0; i < threads; i++ {
		go func() {
			runtime.LockOSThread()
			ready.Done()
			<-release
			runtime.UnlockOSThread()
		}()
	}
	ready.Wait()
	close(release)
}
