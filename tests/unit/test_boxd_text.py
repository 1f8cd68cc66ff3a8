"""boxd decodes a command's text output as the Python boxd did: UTF-8, with what is not
UTF-8 replaced as Python's "replace" handler does (one U+FFFD per maximal ill-formed
subpart), and a character cut between two reads of the pipe comes through whole."""

from __future__ import annotations

import pytest

from sophon.box.box import ExecEvent, ExecOutcome
from tests.unit.boxd_support import BOX_PYTHON, ENV, running_box

SAMPLES = [
    b"plain ascii\n",
    "héllo €uro 𝄞 日本\n".encode(),
    b"\xe2\x82a",            # a 3-byte sequence cut short, then ASCII: one U+FFFD
    b"\x80\xbf\x80",         # lone continuation bytes: one each
    b"\xc0\x80\xc1\xbf",     # overlong two-byte forms: never valid leads
    b"\xe0\x80\x80",         # overlong three-byte form
    b"\xed\xa0\x80",         # a UTF-16 surrogate
    b"\xf4\x90\x80\x80",     # past U+10FFFF
    b"\xf0\x9f\x98",         # a 4-byte sequence cut at the end of the output
    b"\xff\xfe ok \xf5\xf8",
    b"mixed \xe2\x82\xac\xe2\x82 and \xf0\x9f\x98\x80 end",
]


async def output_of(box, argv: list[str]) -> str:  # type: ignore[no-untyped-def]
    text, outcome = "", None
    async for ev in box.exec(argv, timeout=20, env=ENV, cwd="/", output_cap=1 << 20):
        if isinstance(ev, ExecEvent):
            text += ev.data
        else:
            outcome = ev
    assert isinstance(outcome, ExecOutcome) and outcome.exit_code == 0, outcome
    return text


@pytest.mark.parametrize("data", SAMPLES, ids=[s.hex()[:24] for s in SAMPLES])
async def test_output_reads_as_python_would_decode_it(data: bytes) -> None:
    async with running_box() as box:
        got = await output_of(box, [BOX_PYTHON, "-c", "import sys; sys.stdout.buffer.write("
                                    f"bytes.fromhex({data.hex()!r}))"])
    assert got == data.decode("utf-8", "replace")


async def test_a_character_cut_between_two_reads_comes_whole() -> None:
    # The euro sign's first two bytes, a pause long enough for boxd to read them alone,
    # then its last byte.
    script = ("import sys, time; w = sys.stdout.buffer; w.write(b'a\\xe2\\x82'); w.flush(); "
              "time.sleep(0.3); w.write(b'\\xac b'); w.flush()")
    async with running_box() as box:
        assert await output_of(box, [BOX_PYTHON, "-c", script]) == "a€ b"


async def test_a_command_starts_with_no_signal_ignored_whatever_boxd_inherited() -> None:
    # Started with some signals ignored (nohup, a service manager, glibc's 32 and 33 in a
    # parent that ignored them): boxd's commands still start with every one at default.
    async with running_box(ignoring="HUP USR1 34") as box:
        status = await output_of(box, ["grep", "^SigIgn:", "/proc/self/status"])
    assert status == "SigIgn:\t0000000000000000\n"
