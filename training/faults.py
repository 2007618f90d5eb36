"""Named points where a test can stop the process exactly: the hook of the fault-injection tests.

``INSTANCEGM_FAULT=NAME`` (or ``NAME#N``: the N-th time the point is reached) makes the process act there:
``INSTANCEGM_FAULT_ACTION=kill`` (default) sends itself SIGKILL, ``wait`` touches the file named by
``INSTANCEGM_FAULT_READY`` (if set) and sleeps until killed, ``interrupt`` raises KeyboardInterrupt (Ctrl-C).
Without the variable a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

_hits: Counter[str] = Counter()


def point(name: str) -> None:
    """Act here if ``INSTANCEGM_FAULT`` names this point (and this is the requested hit)."""
    spec = os.environ.get("INSTANCEGM_FAULT")
    if not spec:
        return
    target, _, nth = spec.partition("#")
    if target != name:
        return
    _hits[name] += 1
    if _hits[name] != int(nth or 1):
        return
    action = os.environ.get("INSTANCEGM_FAULT_ACTION", "kill")
    if action == "interrupt":
        raise KeyboardInterrupt
    if action == "wait":
        ready = os.environ.get("INSTANCEGM_FAULT_READY")
        if ready:
            Path(ready).touch()
        while True:
            time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
