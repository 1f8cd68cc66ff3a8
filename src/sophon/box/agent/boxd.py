"""boxd's entry point, the box's pid 1 (``python3 -I -S /opt/sophon/agent/boxd.py``).

The agent itself is the ``daemon`` module beside this file (its docstring says what it
does). A script is compiled from source every time it runs, an imported module is not
when its compiled form is at hand: the host compiles the agent's modules once for the
boxes' interpreter (box/bwrap.py) and copies them into every box, so a box's start
does not spend the ~15 ms the compiler takes over these files.
"""

import os
import sys

# -I leaves the script's directory off sys.path; the agent's modules live there.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemon  # noqa: E402

daemon.main()
