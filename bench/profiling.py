"""Flame graphs of the worker processes under load, sampled from outside with py-spy.

py-spy attaches to a running pid, so the workers run unchanged (no profiler hooks in their
code). It is an optional tool: `pip install py-spy`. --nonblocking samples without
pausing the worker, which keeps the profiled run close to an unprofiled one.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SAMPLES_PER_SECOND = 100


def py_spy() -> str | None:
    """The py-spy executable: next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def flame_graphs(pids: dict[str, int], seconds: float, directory: Path) -> Iterator[dict[str, str]]:
    """Record each pid for `seconds`; yields name -> SVG path, written when the block ends."""
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    directory.mkdir(parents=True, exist_ok=True)
    recorders: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, pid in pids.items():
        output = directory / f"profile-{name}.svg"
        command = [
            executable, "record", "--pid", str(pid), "--nonblocking",
            "--rate", str(SAMPLES_PER_SECOND), "--duration", str(math.ceil(seconds)),
            "--format", "flamegraph", "--output", str(output),
        ]  # fmt: skip
        recorders[name] = (
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
            output,
        )
    written: dict[str, str] = {}
    try:
        yield written
    finally:
        for name, (process, output) in recorders.items():
            try:
                _out, err = process.communicate(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                process.kill()
                _out, err = process.communicate()
            if process.returncode == 0 and output.exists():
                written[name] = str(output)
            else:
                message = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                print(f"py-spy failed for {name}: {message[0]}", file=sys.stderr)
