"""boxd's file helper's entry point (``python3 -I -S /opt/sophon/agent/helper.py``), started
by boxd on the first request that needs it.

The helper itself is the ``fileserver`` module beside this file (its docstring says what
it does). A script is compiled from source every time it runs, an imported module is not
when its compiled form is at hand: the host compiles the helper's modules once for the
boxes' interpreter (box/bwrap.py) and copies them into every box.
"""

import os
import sys

# -I leaves the script's directory off sys.path; the helper's modules live there.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fileserver  # noqa: E402

fileserver.main()
