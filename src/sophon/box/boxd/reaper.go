package main

// As pid 1 of the box, boxd reaps every orphan: one goroutine waits for all children,
// and hands the exit of each one it started to whoever waits for it.

import (
	"sync"
	"syscall"
	"time"
)

type reaper struct {
	mu      sync.Mutex
	cond    *sync.Cond
	waiting map[int]chan int // children boxd started, until their exit is taken
	spawns  int
	once    sync.Once
}

func newReaper() *reaper {
	r := &reaper{waiting: map[int]chan int{}}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// start runs fork under the reaper's lock, so the reaper cannot take the new child's
// exit before it is known as one of ours. The channel gets its exit code (negative:
// killed by that signal).
func (r *reaper) start(fork func() (int, error)) (int, chan int, error) {
	r.once.Do(func() { go r.loop() })
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := fork()
	if err != nil {
		return 0, nil, err
	}
	done := make(chan int, 1)
	r.waiting[pid] = done
	r.spawns++
	r.cond.Broadcast()
	return pid, done, nil
}

func (r *reaper) loop() {
	for {
		r.mu.Lock()
		seen := r.spawns
		r.mu.Unlock()
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil { // no child now: sleep until one is started
			r.mu.Lock()
			for r.spawns == seen {
				r.cond.Wait()
			}
			r.mu.Unlock()
			continue
		}
		code := status.ExitStatus()
		if status.Signaled() {
			code = -int(status.Signal())
		}
		r.mu.Lock()
		if done, ok := r.waiting[pid]; ok {
			delete(r.waiting, pid)
			done <- code
		}
		r.mu.Unlock()
	}
}

// waitFor is the exit code from done, or ok=false if timeout (>0) passes first.
func waitFor(done chan int, timeout time.Duration) (int, bool) {
	if timeout <= 0 {
		select {
		case code := <-done:
			done <- code
			return code, true
		default:
			return 0, false
		}
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case code := <-done:
		done <- code // others may look again
		return code, true
	case <-t.C:
		return 0, false
	}
}
