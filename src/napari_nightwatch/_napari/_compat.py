"""Work-arounds for clashes between napari's OpenGL stack and the ML stack in one process."""

from __future__ import annotations

import sys
from pathlib import Path


def avoid_llvm_clash() -> bool:
    """Keep ``triton`` from loading into a process that already has Mesa's ``libLLVM`` mapped.

    With Mesa's software OpenGL (llvmpipe: Xvfb, VMs, remote desktops) napari's
    canvas loads ``libLLVM``; importing triton afterwards (torch pulls it in through
    open_clip and ``torch._dynamo``) loads triton's own LLVM and crashes the process
    with a segmentation fault. Nothing here uses triton (no ``torch.compile``), so it
    is hidden from imports, and only when the clash would happen. Returns True when
    triton was hidden.
    """
    if "triton" in sys.modules:
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no llvmpipe clash known
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # makes `import triton` raise ImportError, which torch handles
    return True
