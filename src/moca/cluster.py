"""Where independent pieces of work run: in this process, a local process pool, or Ray.

A sweep (:mod:`moca.sweep`) and a distributed meta-step (:mod:`moca.meta_dist`) are both a
list of independent tasks, each a pure function of its (small, picklable) input. A
*backend* maps such a function over the tasks and hands each result back as it arrives
(for a progress bar); results come back in task order. Every backend runs a task with
one torch thread, so a task computes the same floats wherever it runs: the backends
differ only in where, never in what.

* ``serial``: in this process, one task after another (the baseline of the speed-ups);
* ``pool``: a local process pool (:class:`concurrent.futures.ProcessPoolExecutor`,
  ``spawn``: a forked child of a process that has used PyTorch's thread pools can hang);
* ``ray``: Ray tasks, on a local Ray started for the run (``auto``: capped in CPUs and
  object-store memory) or on an existing cluster (``ray.init(address=...)``). Ray is an
  optional extra (``pip install 'moca[ray]'``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Iterator, Sequence

from moca.limits import MOST_WORKERS

#: Object-store cap of a local Ray started by moca (bytes). Tasks move kilobytes
#: (regimes, seeds, weights of a small LSTM), so Ray's minimum is plenty.
LOCAL_OBJECT_STORE_BYTES = 80 * 1024**2

RAY_INSTALL_HINT = "install it with: pip install 'moca[ray]' (or pip install 'ray>=2.9')"


class BackendError(ValueError):
    """A backend that cannot be used (Ray missing, bad address, bad worker count)."""


def run_task(fn: Callable[[Any], Any], item: Any) -> Any:
    """Run one task with one torch thread (restored afterwards, for the serial backend)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(item)
    finally:
        torch.set_num_threads(before)


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """End this process (exit code 1) once ``parent``, the process that started it, is gone:
    after a ``kill -9`` of ``moca sweep``, its pool's workers went on, orphaned, until killed
    one by one. A thread polling the parent's pid rather than Linux's ``PR_SET_PDEATHSIG``:
    that one fires when the *thread* that started the child ends (a pool starts workers
    from its own threads), and is Linux only. The parent's pid is handed in, not read here:
    a worker starts Python and imports moca before it gets here, and a parent killed in
    that time left it watching init's pid, orphaned for good."""

    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:  # (an orphan is handed to init or a subreaper)
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="moca: exit with parent").start()


def _pool_init(parent: int) -> None:
    _exit_with_parent(parent)
    # Ctrl-C in a terminal reaches the whole process group. The main process alone acts on
    # it (it stops the workers, Backend.stop(now=True)); a worker that took it too would
    # print KeyboardInterrupt's traceback from here or hand it back as a task's result,
    # and take the task queued after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@dataclass
class Backend:
    """How to run tasks: ``kind`` serial | pool | ray; ``workers`` for the local kinds and a
    local Ray; ``address`` of a Ray cluster (``auto``: start a local Ray for the run)."""

    kind: str = "pool"
    workers: int = 2
    address: str | None = None
    object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES
    _ray_started: bool = field(default=False, repr=False)
    _pool: Any = field(default=None, repr=False)  # the executor while a session is open
    _remote: Any = field(default=None, repr=False)  # run_task as a Ray remote function

    def __post_init__(self) -> None:
        if self.kind not in ("serial", "pool", "ray"):
            raise BackendError(f"backend {self.kind!r}: expected serial, pool or ray")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise BackendError(f"--workers {self.workers!r}: expected a whole number >= 1")
        if self.workers > MOST_WORKERS:
            raise BackendError(f"--workers {self.workers}: at most {MOST_WORKERS} local processes (each a Python "
                               "with torch, about 0.3 GB); a Ray cluster's own CPUs need no --workers")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "ray":
            out["address"] = self.address or "auto"
            import ray

            if ray.is_initialized():
                out["cluster_cpus"] = float(ray.cluster_resources().get("CPU", 0.0))
                out["nodes"] = len([n for n in ray.nodes() if n.get("Alive")])
        else:
            out["workers"] = 1 if self.kind == "serial" else self.workers
        return out

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``[fn(item) for item in items]``, run on this backend; ``on_done(i, result)`` is
        called as each finishes (in completion order)."""
        items = list(items)
        if not items:
            return []
        if self.kind == "serial" or (self.kind == "pool" and self.workers == 1):
            out = []
            for i, item in enumerate(items):
                out.append(run_task(fn, item))
                if on_done:
                    on_done(i, out[-1])
            return out
        if self.kind == "pool":
            return self._map_pool(fn, items, on_done)
        return self._map_ray(fn, items, on_done)

    def _map_pool(self, fn, items, on_done) -> list[Any]:
        if self._pool is None:  # outside a session: a pool for this call only
            with self.session():
                return self._map_pool(fn, items, on_done)
        results: list[Any] = [None] * len(items)
        pending = {self._pool.submit(run_task, fn, item): i for i, item in enumerate(items)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    results[i] = future.result()
                    if on_done:
                        on_done(i, results[i])
        except BaseException as err:
            # (a caller that goes on with the pool does not wait behind them; a broken pool is the
            # executor's thread's to fail, task by task: a cancel from here overtaking it was
            # Python 3.11's InvalidStateError, a traceback, and the rest of its cleanup skipped)
            if not isinstance(err, BrokenExecutor):
                for future in pending:
                    future.cancel()
            raise
        return results

    def _map_ray(self, fn, items, on_done) -> list[Any]:
        ray = require_ray()
        if not ray.is_initialized():
            raise BackendError("ray backend: call Backend.start() (or use `with backend.session():`) first")
        if self._remote is None:
            self._remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        refs = [self._remote.remote(fn, item) for item in items]
        index = {ref.hex(): i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(items)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index[ref.hex()]
                    results[i] = ray.get(ref)
                    if on_done:
                        on_done(i, results[i])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results

    # --- Ray session -------------------------------------------------------------------

    def start(self) -> None:
        """Start the process pool (``pool``) or connect to Ray (``ray``); no-op for ``serial``.
        Spawned workers import moca afresh (a script using the pool needs the usual
        ``if __name__ == "__main__":`` guard)."""
        if self.kind == "pool" and self.workers > 1 and self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                             initializer=_pool_init, initargs=(os.getpid(),))
        if self.kind != "ray":
            return
        ray = require_ray()
        if ray.is_initialized():
            return
        started = time.perf_counter()
        if self.address in (None, "auto", "local"):
            # A local Ray for this run only, capped in CPUs and object-store memory, with no
            # dashboard: on a shared machine it takes what the run asks for and nothing more.
            with _signals_held(ray):
                ray.init(num_cpus=self.workers, object_store_memory=self.object_store_bytes,
                         include_dashboard=False, log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", **_pythonpath()}})
        else:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise BackendError(f"--ray {self.address}: cannot connect to the Ray cluster "
                                   f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        self._ray_started = True
        self.start_seconds = time.perf_counter() - started

    def stop(self, now: bool = False) -> None:
        """Stop the pool or the Ray started for the run. ``now``: end the pool's workers
        instead of waiting for the tasks they run (after Ctrl-C or a failed task, whose
        results nobody would read)."""
        if self._pool is not None:
            if now:
                _end_workers(self._pool)
            self._pool.shutdown(wait=True, cancel_futures=True)  # (after _end_workers: joins nothing more)
            self._pool = None
        self._remote = None
        if self.kind == "ray" and self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    def parallelism(self) -> int:
        """How many tasks run at once: the workers, or a Ray cluster's CPUs."""
        if self.kind == "serial":
            return 1
        if self.kind == "ray":
            import ray

            if ray.is_initialized():
                return max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self.workers

    def running(self) -> bool:
        """Whether the pool is up or Ray is connected (serial: always)."""
        if self.kind == "pool" and self.workers > 1:
            return self._pool is not None
        if self.kind == "ray":
            import ray

            return ray.is_initialized()
        return True

    @contextmanager
    def session(self) -> Iterator["Backend"]:
        """Start the pool or Ray for the block and stop it after, whatever happens; a
        pool or Ray already running (started by the caller) is left as it is."""
        owned = not self.running()
        self.start()
        try:
            yield self
        except BaseException:
            if owned:
                self.stop(now=True)
            raise
        if owned:
            self.stop()


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Shut a process pool down and terminate its workers (SIGTERM). Python 3.14 has
    ``ProcessPoolExecutor.terminate_workers``; before it, the executor's own process table.

    The shutdown reaches the executor's thread before the workers end: where that thread
    found the workers ended first, it took the pool for broken and marked every pending
    task failed, and Python 3.11's executor raised InvalidStateError on the tasks an
    interrupted map had cancelled (a traceback after "moca: interrupted", about one sweep
    Ctrl-C in 40). Told of the shutdown first, it drops the cancelled tasks, then finds the
    workers gone."""
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # (the shutdown forgets them)
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    if manager is not None:
        manager.join(timeout=30.0)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(signum)


@contextmanager
def _signals_held(ray: Any = None) -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while a local Ray starts, and raised again once it has:
    one in the middle of ``ray.init`` left Ray's agents running, orphaned (Ray's shutdown
    knows its processes only once the start is done; at exit it then stops them all). Held by
    Python handlers that only record, not by the signal mask, which the programs Ray starts
    meanwhile would inherit (they then ignored Ray's own SIGTERM at its shutdown). The SIGTERM
    handler ``ray.init`` installs first thing (``sys.exit(15)``, which ended the start midway
    as well) is not installed meanwhile: ``ray``'s ``_private.utils.set_sigterm_handler`` does
    nothing until the start is done (a private function: where another Ray has none, a
    SIGTERM reaching its handler is taken as one held). SIGTERM stays what moca made of it
    (its Ctrl-C). Main thread only: signals reach no other."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    before = {sent: signal.signal(sent, lambda signum, frame: received.append(signum))
              for sent in (signal.SIGINT, signal.SIGTERM)}
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    rays = getattr(utils, "set_sigterm_handler", None)
    if rays is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    except SystemExit as stop:
        if stop.code != signal.SIGTERM:
            raise
        received.append(signal.SIGTERM)
    finally:
        if rays is not None:
            utils.set_sigterm_handler = rays
            if before[signal.SIGTERM] is signal.SIG_DFL:  # (what Ray would have left: an exit that
                # runs its shutdown at exit, where SIGTERM's default ends the process without it)
                before[signal.SIGTERM] = _exit_on_sigterm
        for sent, handler in before.items():
            if handler is not None:
                signal.signal(sent, handler)
        if received:
            signal.raise_signal(received[0])


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens at: Ray itself retries for minutes."""
    import socket

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BackendError(f"--ray {address}: expected 'auto', HOST:PORT (e.g. head:6379) or ray://HOST:PORT")
    if not 1 <= int(port) <= 65535:  # (the system wraps a port beyond 16 bits: it was "no cluster answers")
        raise BackendError(f"--ray {address}: port {int(port)} is outside 1-65535")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise BackendError(f"--ray {address}: no Ray cluster answers there ({err.strerror or err})") from None


def _pythonpath() -> dict[str, str]:
    """A local Ray's workers import moca as this process does (an uninstalled checkout)."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}


def require_ray():
    """The ``ray`` module, or :class:`BackendError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendError(f"--ray: Ray is not installed; {RAY_INSTALL_HINT}") from None
    return ray


def backend_from_options(ray_address: str | None, workers: int) -> Backend:
    """The backend a command's ``--ray``/``--workers`` options ask for (Ray checked now)."""
    if ray_address is not None:
        if not ray_address.strip():
            raise BackendError("--ray: expected 'auto' or a cluster address (e.g. ray://head:10001 or head:6379)")
        require_ray()
        return Backend("ray", workers=workers, address=ray_address.strip())
    return Backend("pool" if workers > 1 else "serial", workers=workers)
