"""Running a benchmark script's ``--quick`` path inside the test process."""

import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# A script run as a file finds its shared helpers (_args, _timing) beside it; runpy.run_path
# does not put the script's folder on sys.path, so the helpers are found here.
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))


def run_script(name: str, args: list[str], monkeypatch) -> None:
    """Run ``benchmarks/<name>`` as ``__main__`` with ``args``; the scripts pin one torch
    thread, so the suite gets its own count back afterwards."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", [name, *args])
    try:
        runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:
        torch.set_num_threads(threads)


def load_script(name: str) -> SimpleNamespace:
    """``benchmarks/<name>``'s functions and constants, without running its ``main``."""
    return SimpleNamespace(**runpy.run_path(str(BENCHMARKS / name)))
