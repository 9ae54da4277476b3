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
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Iterator, Sequence
from contextlib import contextmanager

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


def _pool_init() -> None:
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

    def __post_init__(self) -> None:
        if self.kind not in ("serial", "pool", "ray"):
            raise BackendError(f"backend {self.kind!r}: expected serial, pool or ray")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise BackendError(f"--workers {self.workers!r}: expected a whole number >= 1")

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
        results: list[Any] = [None] * len(items)
        with ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=get_context("spawn"),
                                 initializer=_pool_init) as pool:
            pending = {pool.submit(run_task, fn, item): i for i, item in enumerate(items)}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        i = pending.pop(future)
                        results[i] = future.result()
                        if on_done:
                            on_done(i, results[i])
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return results

    def _map_ray(self, fn, items, on_done) -> list[Any]:
        ray = require_ray()
        if not ray.is_initialized():
            raise BackendError("ray backend: call Backend.start() (or use `with backend.session():`) first")
        remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        fn_ref = ray.put(fn)
        refs = [remote.remote(fn_ref, item) for item in items]
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
        """Connect to Ray (``kind == "ray"``); a no-op for the local kinds."""
        if self.kind != "ray":
            return
        ray = require_ray()
        if ray.is_initialized():
            return
        started = time.perf_counter()
        if self.address in (None, "auto", "local"):
            # A local Ray for this run only, capped in CPUs and object-store memory, with no
            # dashboard: on a shared machine it takes what the run asks for and nothing more.
            ray.init(num_cpus=self.workers, object_store_memory=self.object_store_bytes, include_dashboard=False,
                     log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", **_pythonpath()}})
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise BackendError(f"--ray {self.address}: cannot connect to the Ray cluster "
                                   f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        self._ray_started = True
        self.start_seconds = time.perf_counter() - started

    def stop(self) -> None:
        if self.kind == "ray" and self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    @contextmanager
    def session(self) -> Iterator["Backend"]:
        """Start (Ray) for the duration of the block, and always shut it down."""
        self.start()
        try:
            yield self
        finally:
            self.stop()


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
