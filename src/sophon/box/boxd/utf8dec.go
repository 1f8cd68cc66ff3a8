package main

// An incremental UTF-8 decoder that replaces what is not UTF-8 as Python's "replace"
// error handler does: one U+FFFD for each maximal subpart of an ill-formed sequence
// (Unicode 3.9, "U+FFFD Substitution of Maximal Subparts"), so output reads the same as
// it did when boxd was a Python program. A sequence cut at a chunk's end waits for the
// next chunk.

import "strings"

type utf8Decoder struct{ pending []byte }

const replacement = "\uFFFD"

// secondByte is the range a lead byte's second byte must fall in, and the sequence's length.
func secondByte(b byte) (lo, hi byte, n int) {
	switch {
	case b >= 0xC2 && b <= 0xDF:
		return 0x80, 0xBF, 2
	case b == 0xE0:
		return 0xA0, 0xBF, 3
	case b >= 0xE1 && b <= 0xEC, b == 0xEE, b == 0xEF:
		return 0x80, 0xBF, 3
	case b == 0xED:
		return 0x80, 0x9F, 3
	case b == 0xF0:
		return 0x90, 0xBF, 4
	case b >= 0xF1 && b <= 0xF3:
		return 0x80, 0xBF, 4
	case b == 0xF4:
		return 0x80, 0x8F, 4
	}
	return 0, 0, 0
}

func (d *utf8Decoder) decode(data []byte, final bool) string {
	buf := data
	if len(d.pending) > 0 {
		buf = append(d.pending, data...)
		d.pending = nil
	}
	var sb strings.Builder
	sb.Grow(len(buf))
	i := 0
	for i < len(buf) {
		b := buf[i]
		if b < 0x80 {
			start := i
			for i < len(buf) && buf[i] < 0x80 {
				i++
			}
			sb.Write(buf[start:i])
			continue
		}
		lo, hi, n := secondByte(b)
		if n == 0 {
			sb.WriteString(replacement)
			i++
			continue
		}
		k := 1
		for ; k < n; k++ {
			if i+k >= len(buf) {
				break
			}
			c := buf[i+k]
			if k == 1 && (c < lo || c > hi) || k > 1 && (c < 0x80 || c > 0xBF) {
				break
			}
		}
		switch {
		case k == n:
			sb.Write(buf[i : i+n])
			i += n
		case i+k >= len(buf) && !final: // cut at the end: the rest comes next time
			d.pending = append([]byte(nil), buf[i:]...)
			return sb.String()
		default:
			sb.WriteString(replacement)
			i += k
		}
	}
	return sb.String()
}
