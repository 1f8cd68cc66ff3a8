"""boxd's modules compiled ahead for the boxes' python (box/bwrap.py): one compiled file
per module, helper.py (a script, always compiled from source) left out, and a compiled
file left from a module that is gone not copied into boxes."""

from __future__ import annotations

import shutil
from pathlib import Path

import sophon.box
from sophon.box.bwrap import BwrapBackend

AGENT = Path(sophon.box.__file__).parent / "agent"
BOX_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3")


def test_each_module_is_compiled_and_a_gone_one_is_not_copied(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    shutil.copytree(AGENT, agent, ignore=shutil.ignore_patterns("__pycache__"))
    (agent / "__pycache__").mkdir()
    (agent / "__pycache__" / "gone.cpython-311.pyc").write_bytes(b"left by an older server")
    backend = object.__new__(BwrapBackend)  # only what compiling needs
    backend.python = str(BOX_PYTHON)
    compiled = backend._compile_agent(agent)
    modules = {p.name.split(".")[0] for p in compiled}
    assert modules == {p.stem for p in agent.glob("*.py")} - {"helper"}
    assert all(p.stat().st_size > 100 for p in compiled)


def test_without_the_boxes_python_boxes_compile_for_themselves(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    shutil.copytree(AGENT, agent, ignore=shutil.ignore_patterns("__pycache__"))
    backend = object.__new__(BwrapBackend)
    backend.python = str(tmp_path / "no-such-python")
    assert backend._compile_agent(agent) == []
