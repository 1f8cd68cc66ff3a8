package main

import (
	"os"
	"strings"
	"syscall"
	"unsafe"
)

// linkClaude makes Claude Code's link where the Baponi guide's examples look for it (its
// cli_path, ~/.local/bin/claude in a thread's home), unless the thread put something
// there: what a workload put there is its own and stays. Symlinks on the way are not
// followed.
func linkClaude(target string) {
	home := os.Getenv("HOME")
	if home == "" {
		home = "/"
	}
	dir, err := syscall.Open(home, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	for _, part := range []string{".local", "bin"} {
		next, err := syscall.Openat(dir, part, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
		if err == syscall.ENOENT {
			syscall.Mkdirat(dir, part, 0o755)
			next, err = syscall.Openat(dir, part, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
		}
		syscall.Close(dir)
		if err != nil {
			return
		}
		dir = next
	}
	defer syscall.Close(dir)
	name, _ := syscall.BytePtrFromString("claude")
	to, _ := syscall.BytePtrFromString(strings.TrimSpace(target))
	syscall.Syscall(syscall.SYS_SYMLINKAT, uintptr(unsafe.Pointer(to)), uintptr(dir), uintptr(unsafe.Pointer(name)))
}
