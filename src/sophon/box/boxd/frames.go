package main

// Frames: a 4-byte big-endian length, then that many bytes of UTF-8 JSON, both ways.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

const (
	maxFrame  = 8 * 1024 * 1024
	minWindow = 256 * 1024 // characters: an output frame (a chunk as base64) must fit
	chunk     = 64 * 1024
)

type frame = map[string]any

var (
	writeMu sync.Mutex
	out     = bufio.NewWriterSize(os.Stdout, 256*1024)
)

// writeRaw sends one frame's body; a failed write means the host is gone, and so is the box.
func writeRaw(data []byte) {
	var head [4]byte
	binary.BigEndian.PutUint32(head[:], uint32(len(data)))
	writeMu.Lock()
	defer writeMu.Unlock()
	if _, err := out.Write(head[:]); err == nil {
		if _, err = out.Write(data); err == nil {
			err = out.Flush()
		}
		if err == nil {
			return
		}
	}
	os.Exit(0)
}

func send(f frame) {
	data, err := json.Marshal(f)
	if err != nil || len(data) > maxFrame {
		// The host stops a box that sends a frame over the limit: fail the request instead.
		msg := fmt.Sprintf("the answer would be %d bytes, over the %d-byte frame limit", len(data), maxFrame)
		if err != nil {
			msg = "the answer could not be encoded: " + err.Error()
		}
		data, _ = json.Marshal(frame{"id": f["id"], "kind": "error", "code": "reply_too_large", "message": msg})
	}
	writeRaw(data)
}

func sendError(id int64, code, message string) {
	send(frame{"id": id, "kind": "error", "code": code, "message": message})
}

// leadingID reads the id at the start of a request, `{"id": 123,` (the host always puts
// it first), with JSON's whitespace allowed between the tokens.
func leadingID(head []byte) (int64, bool) {
	i := 0
	skip := func() {
		for i < len(head) && (head[i] == ' ' || head[i] == '\t' || head[i] == '\n' || head[i] == '\r') {
			i++
		}
	}
	expect := func(token string) bool {
		skip()
		if !strings.HasPrefix(string(head[i:]), token) {
			return false
		}
		i += len(token)
		return true
	}
	if !expect("{") || !expect(`"id"`) || !expect(":") {
		return 0, false
	}
	skip()
	start := i
	for i < len(head) && head[i] >= '0' && head[i] <= '9' && i-start < 18 {
		i++
	}
	digits := string(head[start:i])
	skip()
	if digits == "" || i >= len(head) || head[i] != ',' && head[i] != '}' {
		return 0, false
	}
	id, err := strconv.ParseInt(digits, 10, 64)
	return id, err == nil
}

// refuse answers a request boxd could not read, if its id can be found at its start;
// else nobody is waiting for it.
func refuse(head []byte, code, message string) {
	if id, ok := leadingID(head); ok {
		sendError(id, code, message)
	}
}

// readFrame returns the next request's body; io.EOF at the end of the stream. A frame over
// the limit is read past (the stream stays in step) and refused.
func readFrame(in *bufio.Reader) ([]byte, error) {
	for {
		var head [4]byte
		if _, err := io.ReadFull(in, head[:]); err != nil {
			return nil, io.EOF
		}
		length := binary.BigEndian.Uint32(head[:])
		if length <= maxFrame {
			body := make([]byte, length)
			if _, err := io.ReadFull(in, body); err != nil {
				return nil, io.EOF
			}
			return body, nil
		}
		start := make([]byte, 64)
		if _, err := io.ReadFull(in, start); err != nil {
			return nil, io.EOF
		}
		if _, err := io.CopyN(io.Discard, in, int64(length)-64); err != nil {
			return nil, io.EOF
		}
		refuse(start, "frame_too_large",
			fmt.Sprintf("a %d-byte request is over the %d-byte frame limit", length, maxFrame))
	}
}

// request is one decoded frame: its fields kept raw, read on demand by type.
type request map[string]json.RawMessage

func (r request) has(key string) bool {
	v, ok := r[key]
	return ok && string(v) != "null"
}

// integer reads a JSON integer (not a float, not a bool).
func (r request) integer(key string) (int64, bool) {
	v, ok := r[key]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	return n, err == nil
}

func (r request) str(key string) (string, bool) {
	var s string
	if v, ok := r[key]; ok && json.Unmarshal(v, &s) == nil {
		return s, true
	}
	return "", false
}

func (r request) number(key string, fallback float64) (float64, bool) {
	v, ok := r[key]
	if !ok || string(v) == "null" {
		return fallback, true
	}
	var f float64
	if json.Unmarshal(v, &f) != nil {
		return 0, false
	}
	return f, true
}

// truthy is Python's bool() of a JSON value, as the host's flags were read before.
func (r request) truthy(key string) bool {
	v, ok := r[key]
	if !ok {
		return false
	}
	switch s := string(v); s {
	case "null", "false", "0", `""`, "[]", "{}", "0.0":
		return false
	default:
		return true
	}
}

func (r request) strings(key string) ([]string, bool) {
	var out []string
	v, ok := r[key]
	if !ok {
		return nil, false
	}
	if json.Unmarshal(v, &out) != nil {
		return nil, false
	}
	return out, true
}

func (r request) env(key string) (map[string]string, bool) {
	out := map[string]string{}
	v, ok := r[key]
	if !ok || string(v) == "null" {
		return out, true
	}
	if json.Unmarshal(v, &out) != nil {
		return nil, false
	}
	return out, true
}

// reqError is a request's failure, sent as {"kind": "error", "code", "message"}.
type reqError struct{ code, message string }

func (e *reqError) Error() string { return e.message }

func fail(code, format string, args ...any) *reqError {
	return &reqError{code, fmt.Sprintf(format, args...)}
}

// pyRepr quotes a string the way the Python boxd's messages did ('name').
func pyRepr(s string) string {
	q := strconv.Quote(s)
	q = q[1 : len(q)-1]
	if !strings.ContainsRune(s, '\'') {
		return "'" + strings.ReplaceAll(q, `\"`, `"`) + "'"
	}
	return `"` + q + `"`
}
