package main

// Flow control of one request's output, and where ``input`` requests write.

import (
	"os"
	"sync"
	"syscall"
	"time"
)

// credit: at most window characters of data sent and not yet credited back by the host.
// The goroutine that sends waits for credit; the host's credit frames give it.
type credit struct {
	mu     sync.Mutex
	cond   *sync.Cond
	left   int
	closed bool
}

func newCredit(window int) *credit {
	c := &credit{left: window}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// take waits until size may be sent and counts it as sent; false if the request was
// cancelled (send nothing more) or the deadline passed first.
func (c *credit) take(size int, deadline time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.left < size && !c.closed {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return false
		}
		// sync.Cond has no timed wait: a timer wakes everyone at the deadline.
		t := time.AfterFunc(remaining, func() {
			c.mu.Lock()
			c.cond.Broadcast()
			c.mu.Unlock()
		})
		c.cond.Wait()
		t.Stop()
	}
	if c.closed {
		return false
	}
	c.left -= size
	return true
}

func (c *credit) give(size int) {
	c.mu.Lock()
	c.left += size
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *credit) close() {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
}

// feed is an exec's stdin socket or a terminal's pty; one write at a time, in order.
type feed struct {
	mu   sync.Mutex
	fd   int
	pty  *os.File // a terminal's, read and written through the runtime's poller
	gone bool
}

func (f *feed) write(data []byte) error {
	if f.pty != nil {
		_, err := f.pty.Write(data)
		return err
	}
	for len(data) > 0 {
		n, err := syscall.Write(f.fd, data)
		if err == syscall.EINTR || err == syscall.EAGAIN {
			continue
		}
		if err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func (f *feed) end() error {
	if f.pty != nil {
		return nil // a terminal has no end of input: its shell reads Ctrl-D as sent
	}
	return syscall.Shutdown(f.fd, syscall.SHUT_WR)
}

// closeSocket wakes a write blocked on a full socket, then closes it (a pty is closed by
// the terminal that opened it).
func (f *feed) closeSocket() {
	syscall.Shutdown(f.fd, syscall.SHUT_RDWR)
	f.mu.Lock()
	if !f.gone {
		f.gone = true
		syscall.Close(f.fd)
	}
	f.mu.Unlock()
}
