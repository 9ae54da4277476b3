"""Running the `moca` command in a subprocess, and the shape every bad-input answer must have."""

import os
import subprocess
import sys

MOCA = [sys.executable, "-m", "moca.cli"]


def run(*args, cwd=None, timeout=600):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*MOCA, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def run_in_process(*args):
    """The command through typer's test runner (the console script's code path without a
    Python start per call): returncode, stdout and stderr as :func:`run` gives them; an
    exception other than the exit is raised, so a traceback cannot pass for an answer."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from moca.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
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


def interrupt_once_ready(*args, ready: str, timeout=300):
    """Run `moca ARGS`, wait for its first stderr line (which must contain ``ready``: the
    Ctrl-C handler is in place), send one SIGINT, and return (returncode, stdout, stderr)."""
    import signal

    proc = subprocess.Popen([*MOCA, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert ready in first, first
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, stdout, stderr
