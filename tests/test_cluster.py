"""The local process pool: what happens to its workers when a run is stopped."""

import pytest

from _pool_tasks import task
from moca.cluster import Backend


@pytest.mark.parametrize("stop", ["ctrl-c", "failed task"])
def test_a_stopped_run_ends_the_pool_workers_instead_of_waiting_for_their_tasks(stop, tmp_path):
    """Ctrl-C (or a task that fails) ends the workers: a run does not sit until the tasks
    they run and the task queued behind them finish (results nobody would read), and the
    workers leave the SIGINT of a terminal's Ctrl-C to the main process."""
    finished = tmp_path / "slow-task-finished"
    first = ("probe" if stop == "ctrl-c" else "fail", "")
    items = [first, ("slow", str(finished)), ("slow", str(finished))]
    seen = []

    def on_done(i, result):
        seen.append(result)
        raise KeyboardInterrupt

    backend = Backend("pool", workers=2)
    with pytest.raises(KeyboardInterrupt if stop == "ctrl-c" else ValueError):
        with backend.session():
            backend.map(task, items, on_done=on_done)
    assert not backend.running()
    assert not finished.exists(), "the session waited for a slow task to finish"
    if stop == "ctrl-c":
        assert seen and seen[0]["ignores_sigint"]


def test_a_pool_worker_whose_parent_died_before_it_started_exits_at_once():
    """A spawned worker imports moca before its initializer runs; the initializer read its
    parent's pid itself, so after a `kill -9` of `moca sweep` in that time it read init's
    pid, watched init, and stayed orphaned for good (test_sweep's kill test caught it under
    load). It is handed the parent's pid now and exits when that is no longer its parent."""
    import os
    import subprocess
    import sys

    code = ("import time; from moca.cluster import _pool_init; _pool_init({parent}); "
            "print('alive', flush=True); time.sleep(0.2)")
    gone = subprocess.run([sys.executable, "-c", code.format(parent=2 ** 22 + 1)], capture_output=True,
                          text=True, timeout=60)
    assert gone.returncode == 1 and "alive" not in gone.stdout and not gone.stderr, (gone.returncode, gone.stdout, gone.stderr)
    # its real parent (this process): it runs on
    alive = subprocess.run([sys.executable, "-c", code.format(parent=os.getpid())], capture_output=True,
                           text=True, timeout=60)
    assert alive.returncode == 0 and alive.stdout == "alive\n", (alive.returncode, alive.stdout, alive.stderr)


def test_a_stopped_pool_hears_of_the_shutdown_before_its_workers_end(tmp_path, monkeypatch):
    """`moca sweep` stopped by Ctrl-C printed a traceback after "interrupted" (about 1 run in
    40): the workers were ended before the shutdown, and where the executor's thread found
    them gone first, Python 3.11's executor marked the tasks the interrupted map had
    cancelled as broken and failed (InvalidStateError). The shutdown now comes first."""
    import multiprocessing.process
    import threading
    from concurrent.futures import ProcessPoolExecutor

    order, failures = [], []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(repr(args.exc_value)))
    shutdown, terminate = ProcessPoolExecutor.shutdown, multiprocessing.process.BaseProcess.terminate
    monkeypatch.setattr(ProcessPoolExecutor, "shutdown",
                        lambda self, *a, **k: (order.append("shutdown"), shutdown(self, *a, **k))[1])
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "terminate",
                        lambda self: (order.append("terminate"), terminate(self))[1])
    finished = tmp_path / "slow-task-finished"

    def on_done(i, result):
        raise KeyboardInterrupt

    backend = Backend("pool", workers=2)
    with pytest.raises(KeyboardInterrupt):
        with backend.session():
            backend.map(task, [("probe", "")] + [("slow", str(finished))] * 6, on_done=on_done)
    assert "terminate" in order and order.index("shutdown") < order.index("terminate"), order
    assert failures == [] and not backend.running() and not finished.exists()


def test_a_failed_map_cancels_its_pending_tasks_for_a_caller_that_goes_on(tmp_path):
    """A library caller that catches a failed map and goes on in the same session does not
    wait behind the failed map's pending tasks: they are cancelled (only those the workers
    had already taken run)."""
    ran = tmp_path / "ran"
    ran.mkdir()
    backend = Backend("pool", workers=2)
    with backend.session():
        with pytest.raises(ValueError, match="this task fails"):
            backend.map(task, [("fail", "")] + [("brief", str(ran))] * 12)
        assert backend.map(task, [("probe", "")])[0]["ignores_sigint"]
    assert len(list(ran.iterdir())) <= 4  # two workers, one task queued ahead, one more in the race


def test_a_broken_pool_is_left_to_the_executor_to_fail_task_by_task(tmp_path, monkeypatch):
    """A worker that dies by itself (a crash, the OOM killer) breaks the pool, and the
    executor's thread fails its pending tasks one by one; the map's cancel of the same tasks
    could overtake it, and Python 3.11's executor then raised InvalidStateError (a traceback,
    the rest of its cleanup skipped). On a broken pool the map cancels nothing."""
    import threading
    from concurrent.futures import BrokenExecutor, Future

    cancels = []  # whether each cancel came from the main thread (the map's) or the executor's own
    cancel = Future.cancel
    monkeypatch.setattr(Future, "cancel",
                        lambda self: (cancels.append(threading.current_thread() is threading.main_thread()),
                                      cancel(self))[1])
    ran = tmp_path / "ran"
    ran.mkdir()
    backend = Backend("pool", workers=2)
    with pytest.raises(BrokenExecutor):
        with backend.session():
            backend.map(task, [("die", "")] + [("brief", str(ran))] * 8)
    assert True not in cancels and not backend.running()


#: Run in a process of its own, which sets the handlers it needs: a pytest started where
#: SIGINT came ignored (nohup ... &) has no Ctrl-C handler, and the signals sent here would
#: reach the test run itself.
_HELD_SIGNALS_SCRIPT = """
import os, signal
from types import SimpleNamespace
from moca.cluster import _signals_held

def ours(signum, frame):
    raise KeyboardInterrupt

def interrupted(body, ray=None):
    try:
        with _signals_held(ray):
            body()
    except KeyboardInterrupt:
        return True
    return False

signal.signal(signal.SIGTERM, ours)
# (Python's own Ctrl-C, which it leaves out where SIGINT came ignored, as under nohup ... &)
signal.signal(signal.SIGINT, signal.default_int_handler)
for sent in (signal.SIGINT, signal.SIGTERM):
    reached = []
    def start():
        # (held by handlers, not by the mask, which the programs Ray starts meanwhile inherited)
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        os.kill(os.getpid(), sent)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # what ray.init does to SIGTERM
        reached.append("the end of the start")
    assert interrupted(start), sent
    assert reached == ["the end of the start"], sent
    assert signal.getsignal(signal.SIGTERM) is ours
def exit_15():
    raise SystemExit(signal.SIGTERM)  # what Ray's own SIGTERM handler does mid-start
assert interrupted(exit_15)
try:  # any other exit is left as it is
    with _signals_held():
        raise SystemExit(3)
except SystemExit as stop:
    assert stop.code == 3
# Ray's own handler is not installed meanwhile, and its setter is back afterwards
def install(handler):
    signal.signal(signal.SIGTERM, handler)
ray = SimpleNamespace(_private=SimpleNamespace(utils=SimpleNamespace(set_sigterm_handler=install)))
with _signals_held(ray):
    recorder = signal.getsignal(signal.SIGTERM)
    ray._private.utils.set_sigterm_handler(lambda signum, frame: None)
    assert signal.getsignal(signal.SIGTERM) is recorder and recorder is not ours
assert ray._private.utils.set_sigterm_handler is install and signal.getsignal(signal.SIGTERM) is ours
# with no handler of one's own, SIGTERM exits (so that Ray's shutdown runs at exit), as Ray's would
signal.signal(signal.SIGTERM, signal.SIG_DFL)
with _signals_held(ray):
    pass
try:
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, [])  # (a moment for the handler to run)
    raise AssertionError("SIGTERM did not exit")
except SystemExit as stop:
    assert stop.code == signal.SIGTERM
print("held and delivered")
"""


def test_a_signal_while_a_local_ray_starts_is_delivered_once_it_has():
    """A Ctrl-C (or SIGTERM) in the middle of ray.init left Ray's agents running, orphaned:
    it is held back until the start is done (Ray then stops them all at exit), and the
    SIGTERM handler Ray installs gives way to the one before it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    source = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", _HELD_SIGNALS_SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": source})
    assert done.returncode == 0 and done.stdout == "held and delivered\n", done.stderr
