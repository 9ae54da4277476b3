"""What moca writes lands where the user pointed, and nothing of theirs is replaced or lost:
through a symbolic link to its target, to a FIFO as a stream, never over a folder of
theirs, and a folder it may not write in is named before the work."""

import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import assert_bad_input, run_in_process

from moca import checkpoint, files


def test_a_scenario_is_written_through_a_link_and_into_a_fifo(tmp_path):
    """A rename over the path replaced a symbolic link with a file (its target kept the old
    scenario) and a FIFO (or /dev/null, as root) with a regular file."""
    target = tmp_path / "s.json"
    assert run_in_process("scenario", "new", "--seed", 1, "-o", target).returncode == 0
    link = tmp_path / "link.json"
    link.symlink_to(target)
    made = run_in_process("scenario", "new", "--seed", 2, "--model", "CLSC-2", "-o", link)
    assert made.returncode == 0, made.stderr
    assert link.is_symlink() and '"model": "CLSC-2"' in target.read_text()
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    made = run_in_process("scenario", "new", "--seed", 1, "-o", fifo)
    reader.join(timeout=60)
    assert made.returncode == 0, made.stderr
    assert fifo.is_fifo() and got and got[0].startswith(b"{") and b'"model": "CLSC-1"' in got[0]


def test_a_checkpoint_is_written_through_a_link_and_keeps_a_users_dot_old_folder(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    checkpoint.save(real, {"w": torch.zeros(2)}, {"kind": "test"})
    link.symlink_to(real)
    checkpoint.save(link, {"w": torch.ones(2)}, {"kind": "test"})
    assert link.is_symlink() and checkpoint.load(real)[0]["w"].tolist() == [1.0, 1.0]
    # ".real.old" was the fixed name of the replaced one, deleted first: a user's folder of that name too
    mine = tmp_path / ".real.old"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    checkpoint.save(real, {"w": torch.full((2,), 2.0)}, {"kind": "test"})
    assert (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real.old", "link", "real"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_a_checkpoint_is_replaced_in_one_step_its_name_never_missing(tmp_path, monkeypatch):
    """Replacing a checkpoint took two renames (the old one aside, the new one in); a kill
    between them left no checkpoint under its name, only hidden folders. Linux swaps the
    two in one step (renameat2 RENAME_EXCHANGE): no rename of either happens any more."""
    real = tmp_path / "real"
    checkpoint.save(real, {"w": torch.zeros(2)}, {"kind": "test"})

    def no_rename(src, dst):
        raise AssertionError(f"renamed {src} -> {dst}: the name was missing for a moment")

    monkeypatch.setattr(os, "replace", no_rename)
    checkpoint.save(real, {"w": torch.ones(2)}, {"kind": "test"})
    monkeypatch.undo()
    assert checkpoint.load(real)[0]["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]
    # two folders swapped, files inside them untouched
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    assert files.exchange_paths(tmp_path / "a", tmp_path / "b") and (tmp_path / "b" / "x").read_text() == "a"
    assert not files.exchange_paths(tmp_path / "a", tmp_path / "gone")  # (the caller renames instead)
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev:  # another file system: EXDEV, no swap
        (tmp_path / "c").mkdir()
        other = Path(tempfile.mkdtemp(dir=shm))
        try:
            assert not files.exchange_paths(tmp_path / "c", other) and (tmp_path / "c").is_dir()
        finally:
            other.rmdir()


def test_a_checkpoint_whose_last_rename_fails_is_the_old_one_again(tmp_path, monkeypatch):
    """Where the system cannot swap in one step, two renames, and the old one back if the second fails."""
    real = tmp_path / "real"
    checkpoint.save(real, {"w": torch.zeros(2)}, {"kind": "test"})
    monkeypatch.setattr(checkpoint, "exchange_paths", lambda first, second: False)
    renames = []
    replace = os.replace

    def failing(src, dst):
        renames.append((str(src), str(dst)))
        if str(dst) == str(real) and ".real." in str(src) and ".old." not in str(src):
            raise OSError("disk full")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(real, {"w": torch.ones(2)}, {"kind": "test"})
    monkeypatch.undo()
    assert len(renames) == 3  # the old one aside, the new one refused, the old one back
    assert checkpoint.load(real)[0]["w"].tolist() == [0.0, 0.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]


def test_a_folder_this_user_may_not_write_in_is_named_before_the_work(tmp_path, monkeypatch):
    """As another user than root, `train -o ro/ck` failed after its minutes with an
    internal PermissionError naming a temporary folder ('sweep failed' for a sweep)."""
    locked = tmp_path / "ro"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if os.fspath(path) == str(locked) else
                        access(path, mode))  # (the tests may run as root, who may write anywhere)
    with pytest.raises(files.OutputError, match=f"-o {locked}/x.json: no permission to write in {locked}"):
        files.check_parent(locked / "x.json")
    scenario = tmp_path / "s.json"
    assert run_in_process("scenario", "new", "--seed", 1, "-o", scenario).returncode == 0
    for args in (("scenario", "new", "--seed", 1, "-o", locked / "s.json"),
                 ("train", "--steps", 1, "-o", locked / "ck"),
                 ("oracle", "--scenario", scenario, "--plot", locked / "plan.png"),
                 ("sweep", "--field", "carbon_tax", "--values", "0", "--policies", "oracle", "--scenarios", 2,
                  "--json", locked / "sweep.json")):
        option = "--plot" if "--plot" in args else "--json" if "--json" in args else "-o"
        assert_bad_input(run_in_process(*args), f"{option} {locked}", "no permission to write in")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_a_run_folder_stopped_while_written_leaves_nothing(tmp_path, failure):
    """moca run writes its folder through files.write_folder: a Ctrl-C while the report was
    written left a hidden .ID.tmp folder holding half the run."""
    def write(staging):
        (staging / "metrics.json").write_text("{}")
        raise failure("stopped")

    with pytest.raises(failure):
        files.write_folder(tmp_path / "20261206-1", write)
    assert list(tmp_path.iterdir()) == []
    done = files.write_folder(tmp_path / "20261206-2", lambda staging: (staging / "report.md").write_text("#"))
    assert [p.name for p in tmp_path.iterdir()] == ["20261206-2"] and (done / "report.md").read_text() == "#"



def test_an_output_to_dev_stdout_on_a_pipe_is_written_to_the_pipe():
    """/dev/stdout on a pipe links to "pipe:[N]", which resolves to nothing: it was taken for
    a new file in /proc/PID/fd (exit 2, nothing written), and a sweep's journal was left in
    /dev as /dev/stdout.tasks.jsonl."""
    import json
    from pathlib import Path

    from _cli import run

    made = run("scenario", "new", "--seed", 1, "-o", "/dev/stdout")  # (captured: stdout is a pipe)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout[:made.stdout.rindex("}") + 1])["model"] == "CLSC-1"
    swept = run("sweep", "--field", "carbon_tax", "--values", "0,100", "--policies", "oracle", "--scenarios", 2,
                "--workers", 1, "--json", "/dev/stdout")
    assert swept.returncode == 0, swept.stderr
    assert '"field": "carbon_tax"' in swept.stdout and not Path("/dev/stdout.tasks.jsonl").exists()


def test_a_run_folder_that_cannot_be_put_in_place_is_kept_and_named(tmp_path, monkeypatch):
    """Written whole, then the rename failed (a folder of that name made meanwhile): the
    staged run was deleted with the error. It is kept, and the error says where."""
    def refuse(source, target):
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(files.OutputError, match=r"could not be put in place .*kept in .*\.20261207-1\.tmp"):
        files.write_folder(tmp_path / "20261207-1", lambda staging: (staging / "metrics.json").write_text("{}"))
    assert (tmp_path / ".20261207-1.tmp" / "metrics.json").read_text() == "{}"


def test_the_staging_of_a_killed_world_is_removed_and_no_other(tmp_path):
    """moca run's CLSC-1 process is killed on Ctrl-C (it ignores SIGINT): a kill runs no
    cleanup, so its half-written .ID.tmp was left; the parent removes it, and only it."""
    for name in (".20261207-000232.tmp", ".20261207-000232-1.tmp", ".20261207-000232-clsc2.tmp", "20261207-000232",
                 ".20261207-000233.tmp"):
        (tmp_path / name).mkdir()
    files.remove_staging(tmp_path, "20261207-000232")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".20261207-000232-clsc2.tmp", ".20261207-000233.tmp",
                                                           "20261207-000232"]


def test_an_output_to_dev_stdout_redirected_to_a_file_is_written_after_what_is_there(tmp_path):
    """/dev/stdout redirected to a file resolves to that regular file: it was renamed over
    (what the command printed after it went to the old, unlinked file), refused as "not a
    scenario file" under >>, and a sweep's journal was made in /dev."""
    import subprocess
    from pathlib import Path

    from _cli import MOCA

    kept = tmp_path / "out.txt"
    kept.write_text("first line\n")
    with open(kept, "ab") as out:
        done = subprocess.run([*MOCA, "scenario", "new", "--seed", "1", "-o", "/dev/stdout"], stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert kept.read_text().startswith('first line\n{\n "model": "CLSC-1"')
    table = tmp_path / "sweep.txt"
    with open(table, "wb") as out:
        done = subprocess.run([*MOCA, "sweep", "--field", "carbon_tax", "--values", "0,100", "--policies", "oracle",
                               "--scenarios", "2", "--workers", "1", "--json", "/dev/stdout"], stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    text = table.read_text()
    assert text.startswith("{") and '"field": "carbon_tax"' in text and "compliance cost" in text  # JSON, then table
    assert not Path("/dev/stdout.tasks.jsonl").exists()


def test_a_full_disk_is_said_in_one_line_and_a_json_answer_is_never_cut_short(tmp_path, monkeypatch, capsys):
    """With PYTHONUNBUFFERED=1, `moca oracle --json > plan.json` on a full disk left 4,096
    bytes of JSON and exit 0 (sys.stdout.write dropped the rest of a short write); without
    it, and for a checkpoint's weights, the full disk was an "internal error"."""
    import errno

    from moca.cli import main

    writes = []

    def full_after_512(descriptor, data):  # (the disk takes part of the answer, then nothing)
        if writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        writes.append(bytes(data[:512]))
        return min(len(data), 512)

    monkeypatch.setattr(sys, "stdout", sys.__stdout__)  # (the process's own standard output)
    monkeypatch.setattr(os, "write", full_after_512)
    monkeypatch.delenv("MOCA_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as done:
        main(["regimes", "--json"])
    monkeypatch.undo()
    assert done.value.code == 1 and writes
    assert capsys.readouterr().err.strip().endswith("standard output: No space left on device")
    # safetensors' own error for a full disk becomes the OSError it reports
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                          'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as err:
        checkpoint.save(tmp_path / "ck", {"w": torch.zeros(2)}, {"kind": "test"})
    assert err.value.errno == errno.ENOSPC and not (tmp_path / "ck").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_two_commands_drawing_the_same_figure_each_leave_a_whole_one(tmp_path):
    """Every plot went through the fixed name .NAME.tmp.EXT: a second command drawing the
    same figure renamed the first's half-written file into place, or found its own gone."""
    from moca.cli import _write_plot

    path = tmp_path / "c.svg"
    seen = []

    def draw(name):
        seen.append(name)
        if len(seen) == 1:  # the second drawing starts while the first is still at work
            _write_plot(path, draw)
        Path(name).write_text(f"<svg>{len(seen)}</svg>")

    _write_plot(path, draw)
    assert len(set(seen)) == 2 and path.read_text() in ("<svg>1</svg>", "<svg>2</svg>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.svg"]


def test_a_checkpoint_folder_with_a_leftover_learning_curve_file_is_still_replaceable(tmp_path):
    """A kill while `peers train-ppo` wrote its learning curve left .learning_curve.json.X.tmp
    in the checkpoint folder, and moca then refused its own folder as not a checkpoint's."""
    folder = tmp_path / "pp"
    checkpoint.save(folder, {"w": torch.zeros(2)}, {"kind": "test"})
    (folder / ".learning_curve.json.b4on9egw.tmp").write_text("{")
    (folder / ".learning_curve.x1y2.tmp.png").write_bytes(b"")
    checkpoint.check_replaceable(folder)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(checkpoint.CheckpointError, match="holds notes.txt, not a moca checkpoint's files"):
        checkpoint.check_replaceable(folder)


@pytest.mark.parametrize("output", ["", ".", "absolute"])
def test_a_checkpoint_is_never_written_over_the_current_folder(output, tmp_path, monkeypatch):
    """moca train -o '' (typer reads it as '.'), or -o . in an empty folder or in an older
    checkpoint's, trained for minutes and then could not replace the folder in use ("Device
    or resource busy"): refused before the work, naming the current folder."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = run_in_process("train", "-o", str(here) if output == "absolute" else output, "--steps", 1)
    assert_bad_input(result, "the current folder", "./ckpt")
    assert list(here.iterdir()) == []
    checkpoint.save(tmp_path / "old", {"w": torch.zeros(2)}, {"kind": "test"})
    monkeypatch.chdir(tmp_path / "old")
    with pytest.raises(checkpoint.CheckpointError, match="the current folder"):
        checkpoint.check_replaceable(".")


def test_json_and_figure_outputs_replace_only_what_they_write(tmp_path):
    """--json and --plot replaced any file at their path without a word (another command's
    results, a user's text under an image's name); now a file there is replaced only where it
    is empty or holds what the option writes, and anything else is refused before the work."""
    from typer.testing import CliRunner

    from moca.cli import _json_file, _output_file, app

    sweep = ["sweep", "--field", "carbon_tax", "--values", "0,10", "--scenarios", "2", "--workers", "1",
             "--policies", "oracle"]
    runner = CliRunner()
    other = tmp_path / "run.json"
    other.write_text(json.dumps({"id": "20261207-000000", "command": "moca run", "tasks": {}}))
    before = other.read_bytes()
    out = runner.invoke(app, [*sweep, "--json", str(other)])
    assert out.exit_code == 2 and "exists and is not a moca sweep's results" in " ".join(out.output.split())
    assert other.read_bytes() == before
    notes = tmp_path / "notes.png"
    notes.write_text("my notes")
    out = runner.invoke(app, [*sweep, "--plot", str(notes)])
    assert out.exit_code == 2 and "exists and is not a PNG figure moca drew" in " ".join(out.output.split())
    assert notes.read_text() == "my notes"
    # its own kind, or an empty file, is replaced (a sweep rerun writes over its results)
    mine, figure = tmp_path / "sweep.json", tmp_path / "sweep.png"
    figure.write_bytes(b"")
    for _ in range(2):
        out = runner.invoke(app, [*sweep, "--json", str(mine), "--plot", str(figure)])
        assert out.exit_code == 0, out.output
        assert json.loads(mine.read_text())["field"] == "carbon_tax"
        assert figure.read_bytes().startswith(b"\x89PNG")
    # moca run's --json: one world's metrics or both worlds' (an error in one of them) are its own
    ours = _json_file("a moca run's metrics", ("id", "command"), worlds=True)
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"CLSC-1": {"id": "a", "command": "moca run"}, "CLSC-2": {"error": "stopped"}}))
    _output_file(both, "--json", ours)
    from moca.cli import UsageError

    with pytest.raises(UsageError, match="exists and is not a moca run's metrics"):
        _output_file(mine, "--json", ours)


def test_plot_replaces_a_figure_moca_drew_and_never_a_users_own_image(tmp_path, monkeypatch):
    """--plot replaced any image of its format (only the first bytes were looked at): a user's
    own report.png went without a word. moca names itself in each figure's metadata and
    replaces only a figure with that mark; the mark is found in a figure of any size (a PDF
    keeps it at the end) without reading the whole file."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from typer.testing import CliRunner

    from moca.cli import app

    def draw(path: Path, side: int, metadata: dict) -> None:
        fig = Figure()
        fig.add_subplot().imshow(np.random.default_rng(0).random((side, side)))  # noise: no format compresses it
        fig.savefig(path, metadata=metadata)

    monkeypatch.setattr(files, "_MARK_REACH", 1 << 12)  # (a short reach: the figures below are far longer)
    for suffix in (".png", ".pdf", ".svg"):
        mine, theirs = tmp_path / f"mine{suffix}", tmp_path / f"theirs{suffix}"
        draw(mine, 200, files.figure_metadata(mine))  # the mark beyond a read's reach from one end
        draw(theirs, 10, {})
        assert mine.stat().st_size > 3 * files._MARK_REACH, suffix
        assert files.drawn_by_moca(mine), suffix
        assert not files.drawn_by_moca(theirs), suffix
        renamed = mine.with_suffix(".pdf" if suffix != ".pdf" else ".png")
        renamed.write_bytes(mine.read_bytes())
        assert not files.drawn_by_moca(renamed), suffix  # moca's, but not the format its name says
    sweep = ["sweep", "--field", "carbon_tax", "--values", "0,10", "--scenarios", "2", "--workers", "1",
             "--policies", "oracle"]
    runner = CliRunner()
    report = tmp_path / "report.png"
    draw(report, 10, {})
    before = report.read_bytes()
    out = runner.invoke(app, [*sweep, "--plot", str(report)])
    assert out.exit_code == 2 and "report.png: exists and is not a PNG figure moca drew" in " ".join(out.output.split())
    assert report.read_bytes() == before
    ours = tmp_path / "sweep.svg"
    for _ in range(2):  # the figure of the first run is the second's to replace
        out = runner.invoke(app, [*sweep, "--plot", str(ours)])
        assert out.exit_code == 0, out.output
        assert files.drawn_by_moca(ours)
    # through a link, the figure is drawn in its target's format, and judged in it
    link = tmp_path / "fig.png"
    link.symlink_to(tmp_path / "real.svg")
    for _ in range(2):
        out = runner.invoke(app, [*sweep, "--plot", str(link)])
        assert out.exit_code == 0, out.output
        assert link.is_symlink() and files.drawn_by_moca(tmp_path / "real.svg")
    # and refused naming the target and its format (it said "is not a PNG figure" of an SVG)
    mine = tmp_path / "mine.svg"
    mine.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    other = tmp_path / "other.png"
    other.symlink_to(mine)
    out = runner.invoke(app, [*sweep, "--plot", str(other)])
    assert out.exit_code == 2 and f"exists (a link to {mine}) and is not an SVG figure moca drew" in out.output
    # a link to a file of no figure format (drawn as 'txt': an internal error after the work)
    for name in ("notes.txt", "notes"):
        (tmp_path / name).write_text("")
        text = tmp_path / f"to-{name}.png"
        text.symlink_to(tmp_path / name)
        out = runner.invoke(app, [*sweep, "--plot", str(text)])
        assert out.exit_code == 2 and f"a link to {tmp_path / name}, not a .png, .pdf or .svg file" in \
            out.output.replace("\n", ""), out.output
        assert (tmp_path / name).read_text() == ""
    # a file of blanks only, however long, holds nothing to lose
    blank = tmp_path / "blank.svg"
    blank.write_text(" " * 100_000 + "\n")
    assert runner.invoke(app, [*sweep, "--plot", str(blank)]).exit_code == 0 and files.drawn_by_moca(blank)
