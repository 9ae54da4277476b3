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
