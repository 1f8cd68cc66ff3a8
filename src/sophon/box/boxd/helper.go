package main

// The file helper: the Python half of boxd (agent/fileserver.py), which reads, writes and
// lists files and watches trees for changes. It is started on the first request that
// needs it, so a box that only runs commands never starts an interpreter. It speaks the
// same frames; boxd forwards it the requests it serves and passes on only the frames
// of those requests, and answers them itself if the helper dies.

import (
	"bufio"
	"encoding/json"
	"os"
	"sync"
	"syscall"
)

var helperOps = map[string]bool{
	"fread": true, "fwrite": true, "fput": true, "tree": true, "link": true,
	"watch": true, "rescan": true,
}

type fileHelper struct {
	mu    sync.Mutex
	pid   int
	in    *os.File
	owned map[int64]bool // requests the helper is serving
}

var (
	helper     fileHelper
	helperArgv []string // the box's python and the helper's script
)

func helperPid() int {
	helper.mu.Lock()
	defer helper.mu.Unlock()
	return helper.pid
}

// owns reports whether request id is the helper's (a watch a cancel is aimed at).
func helperOwns(id int64) bool {
	helper.mu.Lock()
	defer helper.mu.Unlock()
	return helper.owned[id]
}

// forward hands a request to the helper, starting it if needed.
func forward(id int64, body []byte) {
	helper.mu.Lock()
	defer helper.mu.Unlock()
	if helper.in == nil {
		if err := startHelper(); err != nil {
			sendError(id, "internal", "boxd could not start its file helper: "+err.Error())
			return
		}
	}
	helper.owned[id] = true
	var head [4]byte
	head[0], head[1], head[2], head[3] = byte(len(body)>>24), byte(len(body)>>16), byte(len(body)>>8), byte(len(body))
	if _, err := helper.in.Write(append(head[:], body...)); err != nil {
		delete(helper.owned, id)
		sendError(id, "internal", "boxd's file helper is not running: "+err.Error())
	}
}

// startHelper runs under helper.mu.
func startHelper() error {
	if len(helperArgv) == 0 {
		return syscall.ENOENT
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return err
	}
	env := map[string]string{}
	for _, kv := range os.Environ() {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				env[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	pid, _, err := spawn(helperArgv, env, "/", []uintptr{inR.Fd(), outW.Fd(), 2}, false)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return err
	}
	helper.pid, helper.in, helper.owned = pid, inW, map[int64]bool{}
	go relay(outR, inW)
	return nil
}

// relay passes the helper's frames on; the helper is as untrusted as any process in the
// box, so only frames of requests it serves go out, and only while it serves them.
func relay(from *os.File, in *os.File) {
	reader := bufio.NewReaderSize(from, 256*1024)
	for {
		body, err := readFrame(reader)
		if err != nil {
			break
		}
		var head struct {
			ID   *int64 `json:"id"`
			Kind string `json:"kind"`
		}
		if json.Unmarshal(body, &head) != nil || head.ID == nil {
			continue
		}
		helper.mu.Lock()
		mine := helper.owned[*head.ID]
		if mine && (head.Kind == "done" || head.Kind == "error") {
			delete(helper.owned, *head.ID)
		}
		helper.mu.Unlock()
		if mine {
			writeRaw(body)
		}
	}
	from.Close()
	helper.mu.Lock()
	left := helper.owned
	if helper.in == in {
		in.Close()
		helper.pid, helper.in, helper.owned = 0, nil, nil
	}
	helper.mu.Unlock()
	for id := range left {
		sendError(id, "internal", "boxd's file helper stopped; the next request starts it again")
	}
}
