package main

// Terminals: a login shell (or argv) on a new pty, its output streamed as base64 until
// it and everything holding the pty have exited, or it is cancelled.

import (
	"encoding/base64"
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"
)

func setWinsize(fd int, rows, cols int) error {
	ws := [4]uint16{uint16(rows), uint16(cols), 0, 0}
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TIOCSWINSZ, uintptr(unsafe.Pointer(&ws)))
	if errno != 0 {
		return errno
	}
	return nil
}

func openPty() (master, slave int, err error) {
	master, err = syscall.Open("/dev/ptmx", syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, -1, err
	}
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(master), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		syscall.Close(master)
		return -1, -1, e
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(master), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		syscall.Close(master)
		return -1, -1, e
	}
	slave, err = syscall.Open(fmt.Sprintf("/dev/pts/%d", n), syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		syscall.Close(master)
		return -1, -1, err
	}
	return master, slave, nil
}

func termSize(req request) (int, int, *reqError) {
	rows, cols := int64(24), int64(80)
	var ok bool
	if req.has("rows") {
		if rows, ok = req.integer("rows"); !ok {
			rows = 0
		}
	}
	if req.has("cols") {
		if cols, ok = req.integer("cols"); !ok {
			cols = 0
		}
	}
	if rows < 1 || rows > 1000 || cols < 1 || cols > 1000 {
		return 0, 0, fail("invalid_request", "rows and cols are whole numbers, 1 to 1000")
	}
	return int(rows), int(cols), nil
}

func opPty(id int64, req request) (frame, *reqError) {
	defer started(id)
	rows, cols, rerr := termSize(req)
	if rerr != nil {
		return nil, rerr
	}
	w, ok := req.integer("window")
	if !ok || w < minWindow {
		return nil, fail("invalid_request", "a terminal's window is at least %d", minWindow)
	}
	argv, _ := req.strings("argv")
	if len(argv) == 0 {
		argv = []string{"bash", "-l"}
	}
	env, ok := req.env("env")
	if !ok {
		return nil, fail("invalid_request", "a terminal's env is malformed")
	}
	master, slave, err := openPty()
	if err != nil {
		return nil, spawnError(argv[0], err)
	}
	setWinsize(slave, rows, cols)
	// The shell gets the pty as its controlling terminal: a new session whose first tty
	// is it, so Ctrl-C reaches what runs in the foreground.
	pid, exited, err := spawn(argv, env, defaultCwd(req), []uintptr{uintptr(slave), uintptr(slave), uintptr(slave)}, true)
	syscall.Close(slave)
	if err != nil {
		syscall.Close(master)
		return nil, spawnError(argv[0], err)
	}
	cred := newCredit(int(w))
	// Non-blocking, so that a terminal waiting for output holds no thread of boxd's: a
	// thread boxd would need then could be one a fork bomb in the box has taken.
	syscall.SetNonblock(master, true)
	term := os.NewFile(uintptr(master), "pty")
	fed := &feed{fd: master, pty: term}
	register(id, pid, cred, fed)
	never := time.Now().Add(100 * 365 * 24 * time.Hour)
	buf := make([]byte, chunk)
	for {
		n, err := term.Read(buf)
		if err != nil || n <= 0 { // EIO: no process holds the pty any more
			break
		}
		text := base64.StdEncoding.EncodeToString(buf[:n])
		if !cred.take(len(text), never) {
			break // cancelled while waiting for the host
		}
		send(frame{"id": id, "kind": "out", "stream": "stdout", "data": text})
	}
	code := <-exited
	unregister(id)
	killGroup(pid) // what the shell left running on the pty goes with it
	fed.mu.Lock()
	fed.gone = true
	term.Close()
	fed.mu.Unlock()
	if code < 0 {
		code = 128 - code
	}
	return frame{"exit_code": code}, nil
}

// startedFeed is the input of exec or terminal target once it has started: a keystroke
// or a resize sent right after the request that starts it waits for it.
func startedFeed(target int64) *feed {
	runMu.Lock()
	ch := fedStarts[target]
	runMu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-time.After(60 * time.Second):
		}
	}
	runMu.Lock()
	defer runMu.Unlock()
	return feeds[target]
}

func opInput(id int64, req request) (frame, *reqError) {
	target, ok := req.integer("target")
	data, ok2 := req.str("data")
	if !req.has("data") {
		data, ok2 = "", true
	}
	if !ok || !ok2 {
		return nil, fail("invalid_request", "input needs an integer target and text data")
	}
	fed := startedFeed(target)
	if fed == nil {
		return nil, fail("not_running", "exec %d is not running with an input", target)
	}
	fed.mu.Lock()
	defer fed.mu.Unlock()
	var err error
	if fed.gone {
		err = syscall.EBADF
	} else if err = fed.write([]byte(data)); err == nil && req.truthy("eof") {
		err = fed.end()
	}
	if err != nil { // closed: the command ended, or stopped reading
		return nil, fail("input_closed", "exec %d no longer reads its input: %v", target, err)
	}
	return frame{"written": runeCount(data, false)}, nil
}

func opResize(id int64, req request) (frame, *reqError) {
	rows, cols, rerr := termSize(req)
	if rerr != nil {
		return nil, rerr
	}
	target, _ := req.integer("target")
	fed := startedFeed(target)
	if fed == nil || fed.pty == nil {
		return nil, fail("not_running", "terminal %s is not running", string(req["target"]))
	}
	fed.mu.Lock()
	defer fed.mu.Unlock()
	if !fed.gone {
		if conn, err := fed.pty.SyscallConn(); err == nil {
			conn.Control(func(fd uintptr) { setWinsize(int(fd), rows, cols) })
		}
	}
	return frame{"rows": rows, "cols": cols}, nil
}

func opCancel(id int64, req request) (frame, *reqError) {
	target, ok := req.integer("target")
	if !ok {
		return nil, fail("invalid_request", "cancel needs an integer target")
	}
	runMu.Lock()
	pid, isRunning := running[target]
	if !isRunning {
		cancelled[target] = true
		runMu.Unlock()
		return frame{"cancelled": false}, nil
	}
	c := credits[target]
	runMu.Unlock()
	killGroup(pid)
	if c != nil {
		c.close() // its output is no longer wanted: stop waiting to send it
	}
	return frame{"cancelled": true}, nil
}

// opProcs counts workload processes: everything but boxd, the sandbox's init and boxd's
// file helper.
func opProcs(id int64, req request) (frame, *reqError) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fail("io_error", "/proc: %v", err)
	}
	skip := map[int]bool{1: true, os.Getpid(): true, helperPid(): true}
	count := 0
	for _, e := range entries {
		pid := 0
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err == nil && fmt.Sprint(pid) == e.Name() && !skip[pid] {
			count++
		}
	}
	return frame{"count": count}, nil
}
