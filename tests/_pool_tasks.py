"""Tasks for the process-pool tests: importable by name, as spawned workers need."""

import os
import signal
import time
from pathlib import Path


def task(item: tuple[str, str]) -> dict:
    """``("probe", _)``: how this worker treats SIGINT; ``("fail", _)``: raise;
    ``("slow", path)``: sleep 20 s, then write ``path`` (so a test sees whether it was let finish);
    ``("brief", folder)``: leave a file in ``folder``, then sleep 0.3 s (so a test counts the tasks run);
    ``("die", _)``: end this worker at once, as a crash or the kernel's OOM killer would."""
    kind, path = item
    if kind == "fail":
        raise ValueError("this task fails")
    if kind == "die":
        os._exit(1)
    if kind == "brief":
        Path(path, f"{os.getpid()}-{time.monotonic_ns()}").touch()
        time.sleep(0.3)
    if kind == "slow":
        time.sleep(20.0)
        Path(path).write_text("finished")
    return {"pid": os.getpid(), "ignores_sigint": signal.getsignal(signal.SIGINT) == signal.SIG_IGN}
