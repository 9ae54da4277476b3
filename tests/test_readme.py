"""The README and docs/MODEL.md as a newcomer reads them: the library snippet runs as
written, every option the command-line summary shows exists, and the example files load."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from moca.regime import load_regime, load_schedule, load_sequence

from _cli import run_in_process as run

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MODEL = (ROOT / "docs" / "MODEL.md").read_text()


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_library_snippet_runs_as_written():
    (snippet,) = blocks(README, "python")
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), namespace)
    lines = out.getvalue().splitlines()
    oracle_cost = float(lines[0])
    episode_cost, violations = lines[1].split()
    # The controller on the env's episode of seed 1000 costs at least the oracle on that scenario.
    assert float(episode_cost) >= oracle_cost * (1 - 1e-9) and int(violations) == 0
    assert float(episode_cost) < 1.2 * oracle_cost
    action = namespace["action"]
    assert action.shape == (6,) and (action >= 0).all()
    assert action[2] >= 0.16 * (action[1] + action[2]) - 1e-6  # the mandate holds for the executed action
    assert any(entry.get("selected") for entry in namespace["curve"])


def test_model_2_library_snippet_runs_as_written():
    (snippet,) = blocks((ROOT / "docs" / "MODEL-2.md").read_text(), "python")
    namespace: dict = {}
    exec(compile(snippet, "docs/MODEL-2.md", "exec"), namespace)
    result, actions = namespace["result"], namespace["actions"]
    assert result.total_cost.shape == (64,) and bool((result.total_cost > 0).all())
    assert actions.grad is not None and float(actions.grad.abs().sum()) > 0  # "gradients reach the actions"


def test_every_option_in_the_command_summary_exists():
    section = README[README.index("## Command line"):README.index("## As a library")]
    commands = [line.split("#")[0] for line in blocks(section, "sh")[0].splitlines() if line.startswith("moca ")]
    assert len(commands) >= 10
    helps: dict[str, str] = {}
    for line in commands:
        words = line.split()
        path = [w for w in words[1:3] if not w.startswith("-")]
        path = path[:2] if path[:1] in (["scenario"], ["peers"]) else path[:1]  # commands with subcommands
        key = " ".join(path)
        if key not in helps:
            result = run(*path, "--help")
            assert result.returncode == 0, result.stderr
            helps[key] = result.stdout
        for option in re.findall(r"(?:^|[\s\[|])(--?[a-z][a-z-]*)", line):
            assert option in helps[key], (line, option)


def test_readme_and_model_examples_load(tmp_path):
    sequence = [b for b in blocks(README, "yaml")][0]
    (tmp_path / "seq.yaml").write_text(sequence)
    assert [label for label, _ in load_sequence(tmp_path / "seq.yaml")] == ["T1", "eu-batteries-2031", "tight"]
    regime_file, schedule_file, sequence_file = blocks(MODEL, "yaml")
    (tmp_path / "r.yaml").write_text(regime_file)
    assert load_regime(tmp_path / "r.yaml").emission_cap == 20000  # the `name:` label is accepted
    (tmp_path / "s.yaml").write_text(schedule_file)
    assert load_schedule(tmp_path / "s.yaml").change_periods() == [26]
    (tmp_path / "q.yaml").write_text(sequence_file)
    assert len(load_sequence(tmp_path / "q.yaml")) == 3
    scenario_json, action_json = (json.loads(b) for b in blocks(MODEL, "json"))
    assert set(scenario_json) == {"model", "params", "regimes", "demand", "return_frac"}
    assert all(len(row) == 6 for row in action_json["actions"])


def test_model_doc_lists_every_parameter_and_cost_term():
    from moca.scenario import Params
    from moca.sim import ACTION_NAMES, COST_TERMS

    for name in Params.model_fields:
        assert f"`{name}`" in MODEL, name
    for name in (*COST_TERMS, *ACTION_NAMES):
        assert f"`{name}`" in MODEL, name


@pytest.mark.parametrize("args", [("--help",), ("simulate", "--help"), ("evaluate", "--help"), ("adapt", "--help")])
def test_help_texts_link_the_model_and_keep_brackets(args):
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "docs/MODEL.md" in result.stdout
    if args[0] == "simulate":
        assert '{"actions": [[o, u_v, u_r, g, f, w], ...]}' in " ".join(result.stdout.split())
    if args[0] == "adapt":
        assert "kept" in result.stdout and "selected" in result.stdout
        from moca.baselines.mpc2 import SAFETY_STOCKS_2  # (the help said 300-4,000 after the grid gained 0)

        grid = f"safety stock picked among {min(SAFETY_STOCKS_2):,.0f}-{max(SAFETY_STOCKS_2):,.0f} units"
        assert grid in " ".join(result.stdout.split())


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_contents_list_every_section_and_every_anchor_link_resolves():
    prose = re.sub(r"```.*?```", "", README, flags=re.S)  # (a '#' in a code block is no heading)
    headings = re.findall(r"^(##+) (.+)$", prose, flags=re.M)
    anchors = {_slug(h) for _, h in headings}
    contents = prose[prose.index("**Contents**"):prose.index("\n## ")]
    listed = re.findall(r"\(#([^)]+)\)", contents)
    assert listed == [_slug(h) for _, h in headings]
    links = re.findall(r"\]\(#([^)]+)\)", prose)
    assert len(links) > len(listed)  # the contents and the links in the text
    assert [a for a in links if a not in anchors] == []
    for name in re.findall(r"\]\((docs/[^)#]+)", prose):  # links to the docs point at files that exist
        assert (ROOT / name).exists(), name


def _curl_decisions() -> list[tuple[dict, dict, dict[str, float]]]:
    """The README's curl sessions' first decision of each chain: (registration, request,
    the action's numbers the README shows)."""
    found = []
    for block in blocks(README, "sh"):
        text = re.sub(r"\n\s*#?\s*", " ", block)  # (commands and answers wrap over lines)
        registered = re.search(r"curl -s \$U/v1/chains -H \"\$H\" -d '(\{.*?\})'", text)
        decided = re.search(r"/decide -H \"\$H\" -d '(\{.*?\})'\s*(?:# \d+ values\s*)?\{\"action\": \{(.*?)\}", text)
        if not (registered and decided):
            continue
        request = decided.group(1).replace("[1000, ..., 1000]", json.dumps([1000] * 52))
        shown = {k: float(v) for k, v in re.findall(r"\"(\w+)\": (-?[\d.]+)", decided.group(2))}
        found.append((json.loads(registered.group(1)), json.loads(request), shown))
    return found


def test_the_curl_sessions_answers_are_what_the_service_answers(tmp_path):
    """The CLSC-2 session showed an answer of an older rule (use_virgin 2606.53 where the
    service answers 342.63): each shown number is checked against the service, as pasted."""
    from fastapi.testclient import TestClient

    from moca.serve import create_app

    cases = _curl_decisions()
    assert {case[0].get("model", "clsc-1") for case in cases} == {"clsc-1", "clsc-2"}
    with TestClient(create_app(tmp_path / "data", worker=False)) as client:
        for registration, request, shown in cases:
            assert client.post("/v1/chains", json=registration).status_code == 201
            answer = client.post(f"/v1/chains/{registration['id']}/decide", json=request).json()
            assert len(shown) >= 5
            for name, value in shown.items():
                assert round(answer["action"][name], 2) == value, (registration["id"], name, answer["action"])
