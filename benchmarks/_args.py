"""Argument types the benchmark scripts share, so that bad input ends in argparse's
``error: argument --x: ...`` (exit 2) instead of a traceback from deep inside a run.

argparse's ``type=int`` takes 0 and negative numbers, which these scripts cannot use (a
count of 0 repeats or scenarios failed on an empty ``min()`` or list minutes later), and a
plain path argument is not checked until it is read. Each type here raises
:class:`argparse.ArgumentTypeError` with the value and what is expected, and returns what
argparse's own type would have (an ``int``, the text, a ``Path``), so valid input runs as
before. moca's modules are imported inside the functions: scripts that only start
subprocesses stay light.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number ``>= low`` (and ``<= high`` when given)."""
    expected = f"a whole number >= {low}" + (f" and <= {high}" if high is not None else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    return parse


#: Counts of things that must happen at least once: repeats, scenarios, threads, plans.
positive_int = whole(1)
#: Counts where 0 means "none" (adaptation steps, events) and seeds (numpy takes no negative seed).
non_negative_int = whole(0)


def positive_float(text: str) -> float:
    """A finite number > 0 (a length of time)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0")
    return value


def one_of(names: Iterable[str]) -> Callable[[str], str]:
    """One of ``names`` (as ``choices=``, but the help text stays as it was)."""
    known = tuple(names)

    def parse(text: str) -> str:
        if text not in known:
            raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(known)}")
        return text

    return parse


def _existing(text: str, directory: bool) -> str:
    """``text`` where it names an existing directory (or file); else the error saying which."""
    path = Path(text)
    if path.is_dir() if directory else path.is_file():
        return text
    if directory:
        problem = "a file, expected a directory" if path.exists() else "no such directory"
    else:
        problem = "a directory, expected a file" if path.is_dir() else "no such file"
    raise argparse.ArgumentTypeError(f"{text!r}: {problem}")


def existing_file(text: str) -> str:
    """The path of a file that exists (returned as given)."""
    return _existing(text, directory=False)


def existing_dir(text: str) -> str:
    """The path of a directory that exists (returned as given)."""
    return _existing(text, directory=True)


def existing_file_path(text: str) -> Path:
    """:func:`existing_file` for an argument that was ``type=Path``."""
    return Path(existing_file(text))


def existing_dir_path(text: str) -> Path:
    """:func:`existing_dir` for an argument that was ``type=Path``."""
    return Path(existing_dir(text))


def output_file(text: str) -> str:
    """The path of a results file to write: its folder must exist and it may not be a folder
    (checked before the run: the write at its end failed with a traceback, the results lost)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: a directory, expected a file to write")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no such directory {str(path.parent)!r} to write it in")
    return text


def output_folder(text: str) -> str:
    """The path of a folder to write: not a file, its parent existing (checked before the run:
    a file there failed with a traceback after the work)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: a file, expected a folder to write")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no such directory {str(path.parent)!r} to write it in")
    return text


def safetensors_file(text: str) -> str:
    """:func:`existing_file` that safetensors can read (a YAML file given by mistake failed in
    the run with safetensors' own traceback)."""
    from safetensors import SafetensorError, safe_open

    existing_file(text)
    try:
        with safe_open(text, "pt"):
            pass
    except (SafetensorError, OSError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"{text!r}: not a safetensors file ({err})") from None
    return text


def output_file_path(text: str) -> Path:
    """:func:`output_file` for an argument that was ``type=Path``."""
    return Path(output_file(text))


def regime_spec(text: str) -> str:
    """A CLSC-1 regime as ``moca.regime.load_regime`` reads it: a name of moca's registry
    (T1-T3 and the presets, ``moca regimes``) or a YAML/JSON regime file; the text is
    returned as given. The error is moca's own, listing the known names."""
    from moca.regime import RegimeError, load_regime

    try:
        load_regime(text)
    except RegimeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def check_policy_checkpoint(parser: argparse.ArgumentParser, option: str, text: str, world: str) -> tuple:
    """``option``'s checkpoint loaded as a policy of ``world`` (``default``: that world's
    shipped meta-init), returned as its loader returns it (module, metadata): a missing,
    corrupted or other world's checkpoint is refused before the run (it ended in a
    traceback), with moca's own message."""
    from moca import checkpoint

    try:
        if world == "CLSC-2":
            from moca.meta2 import load_policy2

            return load_policy2(text)
        return checkpoint.load_policy(text)
    except checkpoint.CheckpointError as err:
        parser.error(f"argument {option}: {err}")


def sweep_values(text: str) -> str:
    """A sweep's ``--values``: a list ``0,0.1,0.2`` or a range ``start:stop:step``, as
    ``moca.sweep.parse_values`` reads it; the text is returned as given."""
    from moca.sweep import SweepError, parse_values

    try:
        parse_values(text)
    except SweepError as err:  # its messages start with the option, which argparse names already
        raise argparse.ArgumentTypeError(str(err).removeprefix("--values").lstrip(": ")) from None
    return text


def check_seed_range(parser: argparse.ArgumentParser, option: str, seeds: Sequence[int]) -> None:
    """``--seeds FIRST LAST+1`` (each :data:`non_negative_int`): at least one seed."""
    first, stop = seeds
    if stop <= first:
        parser.error(f"argument {option}: {first} {stop}: expected the first seed and the last + 1, "
                     f"the second above the first")
