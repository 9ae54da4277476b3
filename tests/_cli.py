"""Running the `moca` command in a subprocess, and the shape every bad-input answer must have."""

import os
import subprocess
import sys

MOCA = [sys.executable, "-m", "moca.cli"]


def start_in_own_session(*args) -> subprocess.Popen:
    """`moca ARGS` started in a session of its own, SIGINT as a terminal leaves it (pytest-xdist's
    workers may ignore it, and a child inherits that): :func:`ctrl_c` is then a terminal's Ctrl-C."""
    import signal

    return subprocess.Popen([*MOCA, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def cpu_seconds(pid: int) -> float:
    """CPU seconds process ``pid`` has used (user + system, from /proc)."""
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ctrl_c_once(proc: subprocess.Popen, ready, timeout: float = 120, sigterm: bool = False) -> str:
    """Once ``ready()`` (polled every 0.2 s while ``proc`` runs), SIGINT to ``proc``'s whole
    process group, as a terminal's Ctrl-C (``sigterm``: SIGTERM to the group, as ``timeout``
    sends it); its stderr once it ended (killed if it does not)."""
    import signal
    import time

    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM if sigterm else signal.SIGINT)
        return proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
        proc.wait()


def run(*args, cwd=None, timeout=600):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*MOCA, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def run_in_process(*args):
    """``moca ARGS`` as the console script runs it (:func:`moca.cli.main`: its one-line errors,
    exit codes and ``sys.argv``), inside this process: no Python start and no import of torch
    per call, which made the CLI tests most of the suite's time. Returncode, stdout and stderr
    as :func:`run` gives them, captured at file descriptors 1 and 2 (what C code or a child
    process writes there too), with warnings shown as a fresh process shows them (this
    suite's own error rules kept). A bug is raised here (``MOCA_TRACEBACK``), so it cannot
    pass for an answer. What a command sets for its process (SIGINT's handler, torch's thread
    count, the random generators' states, environment variables, working folder, umask) is
    put back, so the next test runs as it would have."""
    import os
    import random
    import signal
    import warnings
    from types import SimpleNamespace

    import numpy as np
    import torch
    from click.testing import CliRunner  # (typer's would turn what it invokes into a command)

    from moca import cli

    argv = [str(a) for a in args]

    class ConsoleScript:  # what CliRunner.invoke calls: main(args=..., prog_name=...)
        name = "moca"

        def main(self, args, prog_name, **extra):
            saved_argv, handler, threads = sys.argv, signal.getsignal(signal.SIGINT), torch.get_num_threads()
            torch_rng, numpy_rng, python_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
            environ, cwd = dict(os.environ), os.getcwd()
            umask = os.umask(0o022)  # (read by setting it)
            os.umask(umask)
            sys.argv = ["moca", *args]
            try:
                with warnings.catch_warnings():
                    errors = [f for f in warnings.filters if f[0] == "error"]
                    warnings.resetwarnings()  # then Python's own defaults, as a fresh process has them
                    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
                        warnings.simplefilter("ignore", category)
                    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
                    for action, message, category, module, line in reversed(errors):
                        warnings.filterwarnings(action, message.pattern if message else "", category,
                                                module.pattern if module else "", line)
                    # (pytest records warnings for its summary; a console script prints them on stderr)
                    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
                        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
                    cli.main(list(args))
            finally:
                sys.argv = saved_argv
                signal.signal(signal.SIGINT, handler)
                torch.set_num_threads(threads)
                torch.set_rng_state(torch_rng)
                np.random.set_state(numpy_rng)
                random.setstate(python_rng)
                os.environ.clear()
                os.environ.update(environ)
                os.chdir(cwd)
                os.umask(umask)

    result = CliRunner(capture="fd").invoke(ConsoleScript(), argv, env={"COLUMNS": "200", "MOCA_TRACEBACK": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def assert_bad_input(result, *needles):
    """Exit code 2, no traceback, a message on stderr that names each of ``needles``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.strip(), "expected an error message on stderr"
    for needle in needles:
        assert needle.lower() in result.stderr.lower(), (needle, result.stderr)


def interrupt_once_ready(*args, ready: str, timeout=300, signal_number: int | None = None):
    """Run `moca ARGS`, wait for its first stderr line (which must contain ``ready``: the
    Ctrl-C handler is in place), send one SIGINT (or ``signal_number``), and return
    (returncode, stdout, stderr)."""
    import signal

    proc = subprocess.Popen([*MOCA, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert ready in first, first
        proc.send_signal(signal.SIGINT if signal_number is None else signal_number)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, stdout, stderr


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux /proc)."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):  # (a process that ended while read)
            pass
    return found


def orphans_outlive_a_kill(*args, ready: int = 1, timeout: float = 120) -> list[int]:
    """Start `moca ARGS` in its own session, wait for ``ready`` children, ``kill -9`` it
    (the children only), and return the children still there 10 s later (then killed)."""
    import signal
    import time

    proc = start_in_own_session(*args)
    found: list[int] = []
    try:
        deadline = time.time() + timeout
        while len(found := children(proc.pid)) < ready:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        time.sleep(1.0)  # (past their start)
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") and
                                             "Z" not in _state(pid) for pid in found):
            time.sleep(0.1)
        return [pid for pid in found if os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid)]
    finally:
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"
