"""The benchmark scripts' bad input: argparse's ``error: argument --x: ...`` and exit 2 at
argument parsing (benchmarks/_args.py), never a traceback from inside a run."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from _bench import BENCHMARKS, run_script

import _args  # benchmarks/_args.py (_bench puts benchmarks/ on sys.path)

ROOT = BENCHMARKS.parent


def test_counts_refuse_zero_negatives_and_text():
    assert _args.positive_int("3") == 3 and _args.non_negative_int("0") == 0 and _args.whole(8)("8") == 8
    assert _args.whole(1, 64)("64") == 64 and _args.positive_float("2.5") == 2.5
    for parse, text, expected in ((_args.positive_int, "0", ">= 1"), (_args.positive_int, "-3", ">= 1"),
                                  (_args.positive_int, "2.5", ">= 1"), (_args.non_negative_int, "-1", ">= 0"),
                                  (_args.whole(8), "4", ">= 8"), (_args.whole(1, 64), "65", "<= 64"),
                                  (_args.positive_float, "0", "> 0"), (_args.positive_float, "nan", "> 0"),
                                  (_args.positive_float, "x", "> 0")):
        with pytest.raises(argparse.ArgumentTypeError, match=expected) as err:
            parse(text)
        assert repr(text) in str(err.value)


def test_paths_names_and_ranges(tmp_path):
    file = tmp_path / "w.json"
    file.write_text("{}")
    assert _args.existing_file(str(file)) == str(file) and _args.existing_dir(str(tmp_path)) == str(tmp_path)
    assert _args.existing_file_path(str(file)) == file and _args.existing_dir_path(str(tmp_path)) == tmp_path
    for parse, text, expected in ((_args.existing_file, str(tmp_path / "missing"), "no such file"),
                                  (_args.existing_file, str(tmp_path), "a directory"),
                                  (_args.existing_dir, str(tmp_path / "missing"), "no such directory"),
                                  (_args.existing_dir, str(file), "a file"),
                                  (_args.regime_spec, "NOPE", "known: T1, T2, T3"),
                                  (_args.sweep_values, "abc", "'abc' is not a number"),
                                  (_args.sweep_values, "0:300", "start:stop:step"),
                                  (_args.one_of(("a", "b")), "c", "one of a, b")):
        with pytest.raises(argparse.ArgumentTypeError, match=expected):
            parse(text)
    assert _args.regime_spec("T2") == "T2"
    assert _args.sweep_values("0:300:25") == "0:300:25"
    parser = argparse.ArgumentParser()
    _args.check_seed_range(parser, "--seeds", [1000, 1001])
    with pytest.raises(SystemExit):
        _args.check_seed_range(parser, "--seeds", [1000, 1000])


# (script, bad arguments, the argument the message names)
BAD = [
    ("bench_cli.py", ["--repeats", "0"], "--repeats"),
    ("bench_oracle.py", ["--scenarios", "0"], "--scenarios"),
    ("bench_sim.py", ["--threads", "0"], "--threads"),
    ("bench_sweep.py", ["--values", "abc"], "--values"),
    ("bench_sweep.py", ["--field", "nope"], "--field"),
    ("bench_policy.py", ["--weights", "missing-file"], "--weights"),
    ("bench_mapped_policy.py", ["--scenarios", "0"], "--scenarios"),
    ("bench_losses.py", ["--regime", "NOPE"], "--regime"),
    ("bench_run.py", ["--compare", "A", "missing-dir"], "--compare"),
    ("bench_random_regimes.py", ["--regimes", "0"], "--regimes"),
    ("bench_clsc2_gap.py", ["--seeds", "1000", "1000"], "--seeds"),
    ("bench_policy2.py", ["--checkpoint", "missing-dir"], "--checkpoint"),
    ("bench_policy2.py", ["--checkpoint", "default-reptile"], "--checkpoint"),  # (CLSC-1's, not a CLSC-2 policy)
    ("bench_regime_response.py", ["--world", "CLSC-2", "--checkpoint", "default-reptile"], "--checkpoint"),
    ("bench_regime_map.py", ["--only", "nope"], "--only"),
    ("bench_peers.py", ["--world", "CLSC-9"], "--world"),  # (was "unknown peers [] or world 'CLSC-9'")
    ("bench_peers.py", ["--peers", "nope"], "--peers"),
    ("bench_policy.py", ["--weights", "README.md"], "--weights"),
    ("bench_policy2.py", ["--output", "no-such-dir/policy2.json"], "--output"),  # (a traceback after the run)
    ("run_all.py", ["--out", "benchmarks"], "--out"),  # (a folder: a traceback after the first step)  # (not safetensors: a traceback in the run)
    ("bench_regime_map.py", ["--ship", "README.md"], "--ship"),  # (a file: a traceback after the work)
]


@pytest.mark.parametrize("name,args,option", BAD, ids=[f"{n} {' '.join(a)}" for n, a, _ in BAD])
def test_bad_argument_exits_2_naming_it(name, args, option, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))  # (some scripts put src/ on it)
    with pytest.raises(SystemExit) as done:
        run_script(name, args, monkeypatch)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and option in err, err


@pytest.mark.parametrize("name", sorted(p.name for p in BENCHMARKS.glob("bench_*.py")))
def test_help_gives_the_whole_first_paragraph_of_the_docstring(name, monkeypatch, capsys):
    """--help gave the docstring's first line only, cut mid-sentence ("the cost terms (EUR
    per episode) of")."""
    import ast

    monkeypatch.setattr(sys, "path", list(sys.path))
    doc = ast.get_docstring(ast.parse((BENCHMARKS / name).read_text()), clean=False)
    first = " ".join(doc.split("\n\n")[0].split())
    with pytest.raises(SystemExit) as done:
        run_script(name, ["--help"], monkeypatch)
    assert done.value.code == 0
    assert first in " ".join(capsys.readouterr().out.split()), name


def test_quick_sweep_keeps_the_options_given_beside_it(monkeypatch):
    """bench_sweep.py --quick replaced --values and --scenarios given beside it without a word."""
    import moca.sweep

    def planned(world, field, values, policies, scenarios):
        raise _Parsed(values, scenarios)

    monkeypatch.setattr(moca.sweep, "make_plan", planned)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for args, expected in ((["--quick", "--values", "5,7", "--scenarios", "3"], ("5,7", 3)),
                           (["--quick"], ("0:300:100", 4)), ([], ("0:300:25", 20))):
        with pytest.raises(_Parsed) as done:
            run_script("bench_sweep.py", args, monkeypatch)
        assert done.value.args == expected, args


#: Every script that writes its results to --out (run_all passes its own names on).
WRITERS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py") if '"--out"' in p.read_text())


@pytest.mark.parametrize("name", WRITERS)
def test_an_output_file_in_no_folder_is_refused_before_the_run(name, tmp_path, monkeypatch, capsys):
    """--out in a folder that does not exist ran the benchmark, then failed with a traceback
    at the write, its results lost; a folder for a file the same."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for out, problem in ((tmp_path / "none" / "x.json", "no such directory"), (tmp_path, "a directory")):
        with pytest.raises(SystemExit) as done:
            run_script(name, ["--out", str(out)], monkeypatch)
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert "error: argument --out: " in err and problem in err, err
    assert len(WRITERS) >= 20


@pytest.mark.parametrize("name,args,option", [BAD[0], BAD[3], BAD[7], BAD[8]],
                         ids=[f"{n} {' '.join(a)}" for n, a, _ in (BAD[0], BAD[3], BAD[7], BAD[8])])
def test_bad_argument_in_a_real_process(name, args, option):
    """As from a shell: no traceback, exit 2, the argument named."""
    done = subprocess.run([sys.executable, f"benchmarks/{name}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: argument {option}: " in done.stderr


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("name,key,file", [("bench_mapped_policy.py", "out", "mapped_policy.json"),
                                           ("bench_generalisation.py", "out", "generalisation.json"),
                                           ("bench_regime_map.py", "map", "regime_map.json"),
                                           ("bench_regime_map.py", "out", "regime_map_compare.json")])
def test_default_output_is_beside_the_script(name, key, file, tmp_path, monkeypatch):
    """Not relative to the working directory (run elsewhere, it wrote or read there)."""
    parse = argparse.ArgumentParser.parse_args

    def parsed(self, *a, **k):
        raise _Parsed(parse(self, *a, **k))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(_Parsed) as done:
        run_script(name, [], monkeypatch)
    assert Path(getattr(done.value.args[0], key)) == BENCHMARKS / file


def test_a_checkpoint_is_loaded_as_the_script_will_load_it(tmp_path, capsys):
    """A corrupted checkpoint, or one of the other world, is refused at parsing with moca's
    own message (both ended in a CheckpointError traceback); each world's default passes."""
    import shutil

    from moca import checkpoint

    parser = argparse.ArgumentParser(prog="bench")
    _args.check_policy_checkpoint(parser, "--checkpoint", "default", "CLSC-1")
    _args.check_policy_checkpoint(parser, "--checkpoint", "default", "CLSC-2")
    corrupted = tmp_path / "corrupted"
    shutil.copytree(checkpoint.resolve("default"), corrupted)
    (corrupted / checkpoint.WEIGHTS).write_bytes(b"not the weights")
    for text, world, words in ((str(corrupted), "CLSC-1", "is corrupted"), ("default-reptile", "CLSC-2", "CLSC-1"),
                               (str(tmp_path / "missing"), "CLSC-2", "no such directory")):
        with pytest.raises(SystemExit) as done:
            _args.check_policy_checkpoint(parser, "--checkpoint", text, world)
        err = capsys.readouterr().err
        assert done.value.code == 2 and "error: argument --checkpoint: " in err and words in err, err
