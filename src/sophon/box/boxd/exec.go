package main

// exec: a command with its output streamed, a deadline, an output cap, an optional
// standard input, and optional flow control.

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// What runs, by request id (all under runMu).
var (
	runMu     sync.Mutex
	running   = map[int64]int{}     // process group leader's pid
	credits   = map[int64]*credit{} // windowed requests' flow control
	feeds     = map[int64]*feed{}   // inputs of execs and terminals
	cancelled = map[int64]bool{}    // cancels that arrived before their request started
	// Requests with an input, from their arrival until they start: an input may overtake
	// its request's start (they run on different goroutines) and waits for it here.
	fedStarts = map[int64]chan struct{}{}
)

func expectInput(id int64) {
	runMu.Lock()
	fedStarts[id] = make(chan struct{})
	runMu.Unlock()
}

// started wakes an input waiting for this request, however it went.
func started(id int64) {
	runMu.Lock()
	if ch, ok := fedStarts[id]; ok {
		close(ch)
		delete(fedStarts, id)
	}
	runMu.Unlock()
}

// register records a started request; false if it was cancelled before it started (it
// has been killed then).
func register(id int64, pid int, c *credit, f *feed) {
	runMu.Lock()
	defer runMu.Unlock()
	running[id] = pid
	if c != nil {
		credits[id] = c
	}
	if f != nil {
		feeds[id] = f
	}
	if ch, ok := fedStarts[id]; ok {
		close(ch)
		delete(fedStarts, id)
	}
	if cancelled[id] {
		delete(cancelled, id)
		killGroup(pid)
		if c != nil {
			c.close()
		}
	}
}

func unregister(id int64) *feed {
	runMu.Lock()
	defer runMu.Unlock()
	delete(running, id)
	delete(credits, id)
	f := feeds[id]
	delete(feeds, id)
	return f
}

func killGroup(pid int) {
	syscall.Kill(-pid, syscall.SIGKILL)
}

func window(req request, what string) (*credit, *reqError) {
	if !req.has("window") {
		return nil, nil
	}
	w, ok := req.integer("window")
	if !ok || w < minWindow {
		return nil, fail("invalid_request", "%s window is at least %d characters", what, minWindow)
	}
	return newCredit(int(w)), nil
}

// lookPath finds argv[0] on the PATH of the command's own environment, as execvpe would.
func lookPath(name string, env map[string]string) string {
	if strings.Contains(name, "/") {
		return name
	}
	path, ok := env["PATH"]
	if !ok {
		path = "/bin:/usr/bin"
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return name
}

func envList(env map[string]string) []string {
	list := make([]string, 0, len(env))
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	return list
}

func defaultCwd(req request) string {
	if cwd, ok := req.str("cwd"); ok && cwd != "" {
		return cwd
	}
	if home := os.Getenv("HOME"); home != "" {
		return home
	}
	return "/"
}

// spawn starts argv in a new session with these descriptors as 0, 1, 2.
func spawn(argv []string, env map[string]string, cwd string, files []uintptr, tty bool) (int, chan int, error) {
	attr := &syscall.ProcAttr{
		Dir:   cwd,
		Env:   envList(env),
		Files: files,
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: tty, Ctty: 0},
	}
	path := lookPath(argv[0], env)
	return reap.start(func() (int, error) { return syscall.ForkExec(path, argv, attr) })
}

func spawnError(argv0 string, err error) *reqError {
	if errno, ok := err.(syscall.Errno); ok {
		return fail("spawn_failed", "could not start %s: [Errno %d] %s", pyRepr(argv0), int(errno), errno.Error())
	}
	return fail("spawn_failed", "could not start %s: %v", pyRepr(argv0), err)
}

type chunkRead struct {
	stream string
	data   []byte // nil: the stream ended
}

func opExec(id int64, req request) (frame, *reqError) {
	defer started(id)
	argv, ok := req.strings("argv")
	if !ok || len(argv) == 0 {
		return nil, fail("invalid_request", "an exec needs argv, a list of strings")
	}
	timeoutS, ok1 := req.number("timeout", 60)
	cap64, ok2 := req.integer("output_cap")
	if !req.has("output_cap") {
		cap64, ok2 = 1024*1024, true
	}
	env, ok3 := req.env("env")
	if !ok1 || !ok2 || !ok3 {
		return nil, fail("invalid_request", "an exec's timeout, output_cap or env is malformed")
	}
	binary := req.truthy("binary")
	cwd := defaultCwd(req)
	cred, rerr := window(req, "an exec's")
	if rerr != nil {
		return nil, rerr
	}
	if script, ok := req.str("script"); ok {
		p, rerr := writeScript(id, script)
		if rerr != nil {
			return nil, rerr
		}
		defer os.Remove(p)
		for i, a := range argv {
			argv[i] = strings.ReplaceAll(a, "{script}", p)
		}
	}
	var fed *feed
	stdin := -1
	if req.truthy("stdin") {
		pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, spawnError(argv[0], err)
		}
		syscall.Shutdown(pair[0], syscall.SHUT_RD) // the command only reads; boxd only writes
		fed, stdin = &feed{fd: pair[0]}, pair[1]
	} else if fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0); err == nil {
		stdin = fd
	}
	outR, outW, err1 := os.Pipe()
	errR, errW, err2 := os.Pipe()
	if err1 != nil || err2 != nil {
		return nil, spawnError(argv[0], fmt.Errorf("no pipe: %v %v", err1, err2))
	}
	began := time.Now()
	pid, exited, err := spawn(argv, env, cwd, []uintptr{uintptr(stdin), outW.Fd(), errW.Fd()}, false)
	outW.Close()
	errW.Close()
	if stdin >= 0 {
		syscall.Close(stdin)
	}
	if err != nil {
		outR.Close()
		errR.Close()
		if fed != nil {
			fed.closeSocket()
		}
		return nil, spawnError(argv[0], err)
	}
	register(id, pid, cred, fed)

	reads := make(chan chunkRead, 2)
	// Closed when the exec stops listening (a background child may still hold the pipes):
	// a reader with a chunk nobody will take leaves then.
	stopped := make(chan struct{})
	defer close(stopped)
	readInto := func(f *os.File, name string) {
		for {
			buf := make([]byte, chunk)
			n, err := f.Read(buf)
			if n > 0 {
				select {
				case reads <- chunkRead{name, buf[:n]}:
				case <-stopped:
					return
				}
			}
			if err != nil {
				select {
				case reads <- chunkRead{name, nil}:
				case <-stopped:
				}
				return
			}
		}
	}
	go readInto(outR, "stdout")
	go readInto(errR, "stderr")

	deadline := began.Add(time.Duration(timeoutS * float64(time.Second)))
	sent := map[string]int64{}
	truncated := false
	decoders := map[string]*utf8Decoder{"stdout": {}, "stderr": {}}
	open := 2
	timedOut := false
	var exitedAt time.Time
	var stalled time.Duration // waiting for credit since the main process exited

	emit := func(name, text string) {
		if cred != nil {
			start := time.Now()
			ok := cred.take(runeCount(text, binary), deadline)
			if !exitedAt.IsZero() {
				stalled += time.Since(start)
			}
			if !ok {
				return
			}
		}
		send(frame{"id": id, "kind": "out", "stream": name, "data": text})
	}

	code, haveCode := 0, false
loop:
	for open > 0 {
		now := time.Now()
		if !now.Before(deadline) {
			timedOut = true
			killGroup(pid)
			break
		}
		wait := time.Until(deadline)
		if !exitedAt.IsZero() {
			// Once the main process has exited, a background child may still hold the
			// pipes open: give it a moment to flush, then stop listening. Time spent
			// waiting for the host's credit does not count: what the pipes still hold
			// is the output's end, not a straggler's.
			grace := 200*time.Millisecond - (now.Sub(exitedAt) - stalled)
			if grace <= 0 {
				break
			}
			if grace < wait {
				wait = grace
			}
		}
		timer := time.NewTimer(wait)
		var exitCh chan int
		if exitedAt.IsZero() {
			exitCh = exited
		}
		select {
		case c := <-exitCh:
			code, haveCode = c, true
			exitedAt = time.Now()
		case r := <-reads:
			if r.data == nil {
				open--
				break
			}
			room := cap64 - sent[r.stream]
			if room <= 0 {
				truncated = true
				break
			}
			data := r.data
			if int64(len(data)) > room {
				data = data[:room]
				truncated = true
			}
			sent[r.stream] += int64(len(data))
			var text string
			if binary {
				text = base64.StdEncoding.EncodeToString(data)
			} else {
				text = decoders[r.stream].decode(data, false)
			}
			if text != "" {
				emit(r.stream, text)
			}
		case <-timer.C:
		}
		timer.Stop()
		if open == 0 {
			break loop
		}
	}
	outR.Close() // a reader still blocked (a background child holds the pipe) ends
	errR.Close()
	if !haveCode && !timedOut {
		if c, ok := waitFor(exited, time.Until(deadline)); ok {
			code, haveCode = c, true
		} else {
			timedOut = true
			killGroup(pid)
		}
	}
	if !haveCode {
		code = <-exited
	}
	if f := unregister(id); f != nil {
		f.closeSocket()
	}
	if !binary {
		for _, name := range []string{"stdout", "stderr"} {
			if tail := decoders[name].decode(nil, true); tail != "" {
				emit(name, tail)
			}
		}
	}
	result := frame{"exit_code": code, "signal": nil, "timed_out": timedOut, "truncated": truncated,
		"duration_ms": time.Since(began).Milliseconds()}
	if code < 0 {
		result["exit_code"], result["signal"] = 128-code, -code
	}
	return result, nil
}

func runeCount(text string, binary bool) int {
	if binary {
		return len(text)
	}
	n := 0
	for range text {
		n++
	}
	return n
}

var (
	scriptMu  sync.Mutex
	scriptDir string
)

// scriptDirectory is a private directory under /tmp for code to run. Workloads share
// boxd's uid and can replace anything there; one that is no longer ours (gone, or
// swapped for a symlink) is replaced by a new one.
func scriptDirectory() (string, *reqError) {
	scriptMu.Lock()
	defer scriptMu.Unlock()
	for {
		if scriptDir != "" {
			var st syscall.Stat_t
			if syscall.Lstat(scriptDir, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR &&
				int(st.Uid) == os.Getuid() {
				return scriptDir, nil
			}
		}
		var raw [8]byte
		if f, err := os.Open("/dev/urandom"); err == nil {
			f.Read(raw[:])
			f.Close()
		}
		d := fmt.Sprintf("/tmp/.boxd-%x", raw)
		if err := syscall.Mkdir(d, 0o700); err != nil {
			if err == syscall.EEXIST {
				continue
			}
			return "", fail("spawn_failed", "no directory for the code: %v", err)
		}
		scriptDir = d
	}
}

// writeScript creates the file exclusively, without following links: at worst a
// workload spoils its own execution, never boxd or a later one.
func writeScript(id int64, script string) (string, *reqError) {
	dir, rerr := scriptDirectory()
	if rerr != nil {
		return "", rerr
	}
	path := fmt.Sprintf("%s/exec-%d", dir, id)
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return "", fail("spawn_failed", "could not write the code to run: %v", err)
	}
	defer syscall.Close(fd)
	data := []byte(script)
	for len(data) > 0 {
		n, err := syscall.Write(fd, data)
		if err != nil {
			return "", fail("spawn_failed", "could not write the code to run: %v", err)
		}
		data = data[n:]
	}
	return path, nil
}
