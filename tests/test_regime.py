import json
import re

import numpy as np
import pytest

from moca.regime import (
    PRESETS, TASKS, Regime, RegimeError, RegimeSchedule, load_regime, load_schedule, load_sequence, sample_regime,
)


def test_named_tasks_match_spec():
    assert TASKS["T1"].recycled_content_min == 0.10 and TASKS["T1"].carbon_tax == 0
    assert TASKS["T2"].recycled_content_min == 0.20
    assert TASKS["T3"].recycled_content_min == 0.20 and TASKS["T3"].carbon_tax == 100
    assert PRESETS["eu-ets-2025"].carbon_tax == 75
    assert PRESETS["eu-batteries-2031"].recycled_content_min == 0.16
    assert PRESETS["eu-batteries-2036"].recycled_content_min == 0.26
    assert PRESETS["eu-ppwr-2030"].recycled_content_min == 0.35
    assert PRESETS["eu-ppwr-2040"].recycled_content_min == 0.65
    assert PRESETS["weee-recovery"].recovery_target == 0.65


@pytest.mark.parametrize("field,value,range_text", [
    ("recycled_content_min", 0.96, "[0, 0.95]"),
    ("recycled_content_min", -0.1, "[0, 0.95]"),
    ("carbon_tax", 2000.5, "[0, 2000]"),
    ("landfill_tax", 101, "[0, 100]"),
    ("recovery_target", 1.2, "[0, 1]"),
    ("emission_cap", 0, "> 0"),
    ("emission_cap", -5, "> 0"),
])
def test_out_of_range_names_field_value_and_range(field, value, range_text):
    with pytest.raises(RegimeError) as info:
        load_regime({field: value})
    message = str(info.value)
    assert field in message and str(value) in message and range_text in message


def test_unknown_field_and_nan_refused():
    with pytest.raises(RegimeError, match="carbon_price.*unknown field"):
        load_regime({"carbon_price": 10})
    with pytest.raises(RegimeError, match="carbon_tax"):
        load_regime({"carbon_tax": float("nan")})
    with pytest.raises(RegimeError, match="recycled_content_min.*not a number"):
        load_regime({"recycled_content_min": "high"})


def test_a_plan_under_an_unknown_key_is_told_how_plans_are_written(tmp_path):
    from moca.regime import load_schedule

    plan = tmp_path / "plan.yaml"
    plan.write_text("schedule:\n  - start: 0\n    carbon_tax: 100\n  - start: 26\n    carbon_tax: 400\n")
    with pytest.raises(RegimeError, match="plan.yaml: schedule: unknown field.*list of entries with start.*key regimes"):
        load_schedule(plan)
    with pytest.raises(RegimeError) as info:  # a misspelt rule gets no such hint
        load_regime({"carbon_price": 10})
    assert "regimes" not in str(info.value)


def test_load_from_yaml_and_json(tmp_path):
    (tmp_path / "r.yaml").write_text("recycled_content_min: 0.3\nemission_cap: 25000\n")
    (tmp_path / "r.json").write_text(json.dumps({"carbon_tax": 250, "landfill_tax": 20}))
    assert load_regime(tmp_path / "r.yaml") == Regime(recycled_content_min=0.3, emission_cap=25000)
    assert load_regime(str(tmp_path / "r.json")).landfill_tax == 20
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RegimeError, match="malformed JSON"):
        load_regime(tmp_path / "bad.json")
    with pytest.raises(RegimeError, match="unknown regime name"):
        load_regime("T9")


def test_yaml_exponent_notation_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e6 and 1.5e2 as text; a regime file means numbers.
    (tmp_path / "r.yaml").write_text("emission_cap: 2.5e4\ncarbon_tax: 1.5e2\nlandfill_tax: 2E+1\n")
    assert load_regime(tmp_path / "r.yaml") == Regime(emission_cap=25000, carbon_tax=150, landfill_tax=20)
    (tmp_path / "big.yaml").write_text("carbon_tax: 1e9\n")
    with pytest.raises(RegimeError, match=r"carbon_tax=1000000000.0 is outside its valid range \[0, 2000\]"):
        load_regime(tmp_path / "big.yaml")
    (tmp_path / "text.yaml").write_text("carbon_tax: 1e\n")
    with pytest.raises(RegimeError, match="carbon_tax='1e' is not a number"):
        load_regime(tmp_path / "text.yaml")



def test_yaml_numbers_are_decimal_as_in_yaml_1_2_and_json(tmp_path):
    """YAML 1.1 (PyYAML) reads a leading zero as octal and a:b:c as base 60: `start: 026`
    was period 22, `carbon_tax: 0100` 64 EUR/t and `emission_cap: 20:00:00` 72,000 kg CO2,
    with exit 0, while `start: 08` (no octal digit) was refused."""
    (tmp_path / "s.yaml").write_text("- {start: 000, recycled_content_min: 0.1}\n"
                                     "- {start: 026, recycled_content_min: 0.2, carbon_tax: 0100}\n"
                                     "- {start: 08_0, recycled_content_min: 0.3}\n")  # (underscores: 80)
    schedule = load_schedule(tmp_path / "s.yaml")
    assert [e.start for e in schedule.entries] == [0, 26, 80]
    assert schedule.entries[1].carbon_tax == 100
    (tmp_path / "r.yaml").write_text("carbon_tax: +0x1F\nlandfill_tax: 0o17\nemission_cap: 1_000.5\n"
                                     "recycled_content_min: -0.0\nrecovery_target: 0b0\n")
    assert load_regime(tmp_path / "r.yaml") == Regime(carbon_tax=31, landfill_tax=15, emission_cap=1000.5)
    (tmp_path / "named.yaml").write_text("name: 08\ncarbon_tax: 10\n")  # (was the text '08': it is 8 now)
    with pytest.raises(RegimeError, match=re.escape('name=8: the regime\'s label must be text (e.g. name: "tight"; '
                                                    'quote a label of digits: name: "2030")')):
        load_regime(tmp_path / "named.yaml")
    (tmp_path / "clock.yaml").write_text("emission_cap: 20:00:00\n")
    with pytest.raises(RegimeError, match="emission_cap='20:00:00' is not a number"):
        load_regime(tmp_path / "clock.yaml")
    # a whole number beyond the largest float (or longer than Python's int reads, 4,300 digits)
    # is read as inf and refused by its field (310 digits was an int, an OverflowError in the field)
    for digits in ("9" * 310, "1" * 5000):
        (tmp_path / "long.yaml").write_text(f"carbon_tax: {digits}\n")
        with pytest.raises(RegimeError, match=r"long.yaml: carbon_tax=inf"):
            load_regime(tmp_path / "long.yaml")


def test_a_key_that_is_not_text_is_named(tmp_path):
    """YAML reads `1:` as a number and `yes:` as true; `Params(**data)` then raised TypeError
    ("keywords must be strings", exit 1 as an internal error) and a regime file named no key."""
    from moca.scenario import Params, Params2, ScenarioError, load_params

    for text, key, hint in (("1: 2\n", "1", False), ("yes: 2\n", "True", True), ("~: 2\n", "None", False)):
        (tmp_path / "p.yaml").write_text(text)
        for kind in (Params, Params2):
            with pytest.raises(ScenarioError, match=re.escape(f"p.yaml: params.{key}: unknown parameter")) as err:
                load_params(tmp_path / "p.yaml", kind)
            assert ("YAML reads yes, no, on and off as true and false" in str(err.value)) == hint
        (tmp_path / "r.yaml").write_text(text + "carbon_tax: 10\n")
        with pytest.raises(RegimeError, match=re.escape(f"r.yaml: {key}: unknown field (allowed: ")):
            load_regime(tmp_path / "r.yaml")
    (tmp_path / "s.yaml").write_text("- {start: 0, 1: 2}\n")
    with pytest.raises(RegimeError, match=re.escape("regimes[0].1: unknown field (allowed: ")):
        load_schedule(tmp_path / "s.yaml")

def test_schedule_table_and_validation(tmp_path):
    schedule = RegimeSchedule.from_list([
        {"start": 0, "recycled_content_min": 0.1},
        {"start": 20, "recycled_content_min": 0.2, "carbon_tax": 100, "emission_cap": None},
    ])
    table = schedule.table(52)
    assert table.shape == (52, 5)
    assert np.all(table[:20, 0] == 0.1) and np.all(table[20:, 0] == 0.2) and np.all(table[20:, 1] == 100)
    assert np.all(np.isinf(table[:, 2]))
    assert schedule.regime_at(19) == TASKS["T1"] and schedule.regime_at(20) == TASKS["T3"]
    assert schedule.regime_at(np.int64(20)) == TASKS["T3"]
    for t in (-1, 1.5, True, "3"):  # (-1 and 1.5 gave a regime, where table(-1) is refused)
        with pytest.raises(RegimeError, match="a period is a whole number >= 0"):
            schedule.regime_at(t)
    assert RegimeSchedule.from_list(schedule.to_list()) == schedule
    with pytest.raises(RegimeError, match=r"regimes\[1\].start=0 must be greater"):
        RegimeSchedule.from_list([{"start": 0}, {"start": 0}])
    with pytest.raises(RegimeError, match=r"regimes\[0\].start=3 must be 0"):
        RegimeSchedule.from_list([{"start": 3}])
    with pytest.raises(RegimeError, match=r"regimes\[1\].landfill_tax"):
        RegimeSchedule.from_list([{"start": 0}, {"start": 5, "landfill_tax": 1000}])
    for start, shown in ((float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan"), (2.5, "2.5")):
        with pytest.raises(RegimeError, match=rf"regimes\[1\].start={shown} must be a whole period number >= 0"):
            RegimeSchedule.from_list([{"start": 0}, {"start": start}])
    path = tmp_path / "inf.yaml"
    path.write_text("- {start: 0}\n- {start: .inf, carbon_tax: 75}\n")
    with pytest.raises(RegimeError, match=r"start=inf must be a whole period"):
        load_schedule(path)
    path = tmp_path / "s.yaml"
    path.write_text("- {start: 0, recycled_content_min: 0.1}\n- {start: 10, carbon_tax: 75}\n")
    assert load_schedule(path).change_periods() == [10]


def test_sequence_file(tmp_path):
    path = tmp_path / "seq.yaml"
    path.write_text("- T1\n- {recycled_content_min: 0.3, name: strict}\n- eu-ets-2025\n")
    seq = load_sequence(path)
    assert [label for label, _ in seq] == ["T1", "strict", "eu-ets-2025"]
    path.write_text("- T1\n- T7\n")
    with pytest.raises(RegimeError, match=r"sequence\[1\]='T7'"):
        load_sequence(path)
    # a window on CLSC-1 is named by its entry (it was "regimes[0]", the scenario drawn for it)
    path.write_text("- T1\n- T2\n- {recycled_content_window: 4, recycled_content_min: 0.1}\n")
    with pytest.raises(RegimeError, match=r"^sequence\[2\].recycled_content_window=4: CLSC-1 settles the mandate"):
        load_sequence(path)
    assert load_sequence(path, "CLSC-2")[2][1].recycled_content_window == 4
    # an unknown field lists the fields the world takes: CLSC-1's listed the window it then refused
    path.write_text("- {name: a, foo: 1}\n")
    with pytest.raises(RegimeError, match=r"sequence\[0\].foo: unknown field \(allowed: recycled_content_min, "
                       r"carbon_tax, emission_cap, landfill_tax, recovery_target\)$"):
        load_sequence(path)
    with pytest.raises(RegimeError, match=r"recovery_target, recycled_content_window\)$"):
        load_sequence(path, "CLSC-2")
    # CLSC-2's names are its presets (T1-T3: W = 52); an object is read as written whatever its
    # label (moca continual --model CLSC-2 gave an object labelled T1 W = 52 where it said 1)
    path.write_text("- T1\n- {name: T1, recycled_content_min: 0.1}\n- {name: T2, recycled_content_min: 0.2, "
                    "carbon_tax: 100, recycled_content_window: 13}\n")
    assert [r.recycled_content_window for _, r in load_sequence(path, "CLSC-2")] == [52, 1, 13]
    assert [r.recycled_content_window for _, r in load_sequence(["T1", "T2", "T3"], "CLSC-2")] == [52, 52, 52]
    # a sequence given where a regime or a plan is read: named as a sequence (it was "a schedule",
    # or "regimes[0]: expected an object" without the file)
    path.write_text("- T1\n- T2\n")
    with pytest.raises(RegimeError, match=r"seq.yaml: .*this one holds a list of regimes \(a task sequence"):
        load_regime(path)
    with pytest.raises(RegimeError, match=r"^seq.yaml: regimes\[0\]: expected an object, got str 'T1': a list of "
                                          r"regime names is a task sequence"):
        load_schedule(path)


def test_sampled_regimes_are_valid_and_varied():
    rng = np.random.default_rng(0)
    regimes = [sample_regime(rng) for _ in range(300)]
    rows = np.stack([r.as_row() for r in regimes])
    assert rows[:, 0].max() > 0.3 and rows[:, 1].max() > 300
    assert np.isfinite(rows[:, 2]).any() and np.isinf(rows[:, 2]).any()
    assert (rows[:, 3] > 0).any() and (rows[:, 4] > 0).any()
    for r in regimes[:20]:
        assert Regime.from_row(r.as_row()) == r


def _laughs(levels: int = 9) -> list[str]:
    """YAML whose aliases nest nine-fold per level ("a billion laughs": 9**9 values)."""
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    names = "abcdefghijkl"
    for previous, name in zip(names, names[1:levels]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return lines


def test_a_key_given_twice_is_refused_in_every_file_moca_reads(tmp_path):
    """The parsers keep the last of two equal keys without a word: a regime file saying
    a mandate of 0.2 and then of 0 was read as unregulated, a scenario's second demand used."""
    import shutil
    from importlib.resources import files

    from moca import checkpoint
    from moca.checkpoint import CheckpointError
    from moca.scenario import ScenarioError, draw_scenario, load_actions, load_scenario

    yaml_file, json_file = tmp_path / "r.yaml", tmp_path / "r.json"
    yaml_file.write_text("recycled_content_min: 0.2\ncarbon_tax: 5\nrecycled_content_min: 0.0\n")
    json_file.write_text('{"recycled_content_min": 0.2, "recycled_content_min": 0.0}')
    with pytest.raises(RegimeError, match=r"r.yaml: malformed YAML \(key 'recycled_content_min' is given twice in "
                                          r"one mapping .* at line 3 column 1\)"):
        load_regime(yaml_file)
    with pytest.raises(RegimeError, match=r"r.json: malformed JSON \(key 'recycled_content_min' is given twice"):
        load_regime(json_file)
    merged = tmp_path / "merge.yaml"  # a YAML merge key is no repetition
    merged.write_text("base: &b {carbon_tax: 5}\nthis:\n  <<: *b\n  landfill_tax: 3\n")
    from moca.regime import read_structured

    assert read_structured(merged)["this"] == {"carbon_tax": 5, "landfill_tax": 3}
    scenario = tmp_path / "s.json"
    draw_scenario(1, load_regime("T1")).to_json(scenario)
    text = scenario.read_text()
    scenario.write_text(text.replace('"demand":', '"demand": [1], "demand":', 1))
    with pytest.raises(ScenarioError, match="key 'demand' is given twice in one object"):
        load_scenario(scenario)
    (tmp_path / "a.json").write_text('{"actions": [[0, 0, 0, 0, 0, 0]], "actions": [[1, 1, 1, 1, 1, 1]]}')
    with pytest.raises(ScenarioError, match="actions: key 'actions' is given twice"):
        load_actions(tmp_path / "a.json", 1)
    copy = tmp_path / "ck"
    shutil.copytree(str(files("moca") / "data" / "default"), copy)
    meta = (copy / checkpoint.META).read_text()
    (copy / checkpoint.META).write_text(meta.replace('"kind":', '"kind": "x", "kind":', 1))
    with pytest.raises(CheckpointError, match="checkpoint.json: key 'kind' is given twice"):
        checkpoint.load(copy)


def test_a_label_that_is_not_text_is_refused_as_such(tmp_path):
    from moca.regime import load_sequence

    (tmp_path / "r.yaml").write_text("name: 5\ncarbon_tax: 5\n")  # was "name: unknown field"
    with pytest.raises(RegimeError, match=r"r.yaml: name=5: the regime's label must be text"):
        load_regime(tmp_path / "r.yaml")
    (tmp_path / "s.yaml").write_text("- T1\n- {name: 7, carbon_tax: 5}\n")
    with pytest.raises(RegimeError, match=r"sequence\[1\].name=7: the regime's label must be text"):
        load_sequence(tmp_path / "s.yaml")
    (tmp_path / "r.yaml").write_text("name: tight\ncarbon_tax: 5\n")
    assert load_regime(tmp_path / "r.yaml").carbon_tax == 5


def test_a_byte_order_mark_is_read_past_and_another_world_s_params_are_named_as_such(tmp_path):
    """JSON files with a UTF-8 byte-order mark were refused ('Unexpected UTF-8 BOM') where
    the same YAML was read; a CLSC-2 scenario given as CLSC-1's --params was answered
    'params.cap_market: unknown parameter'; a negative count drew no scenario, silently."""
    from moca.scenario import (Params, Params2, ScenarioError, draw_scenario2, draw_scenarios, draw_scenarios2,
                               load_params, load_scenario)

    (tmp_path / "r.json").write_bytes(b"\xef\xbb\xbf" + b'{"carbon_tax": 5}')
    assert load_regime(tmp_path / "r.json").carbon_tax == 5
    (tmp_path / "p.json").write_bytes(b"\xef\xbb\xbf" + b'{"horizon": 8}')
    assert load_params(tmp_path / "p.json").horizon == 8
    draw_scenario2(3, "T1").to_json(tmp_path / "s2.json")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "s2.json").read_bytes())
    assert load_scenario(tmp_path / "bom.json").horizon == 52
    with pytest.raises(ScenarioError, match=r"s2.json: a CLSC-2 scenario file .its \"model\"., and these are "
                                            r"CLSC-1's parameters: use --model CLSC-2"):
        load_params(tmp_path / "s2.json")
    assert load_params(tmp_path / "s2.json", Params2) == load_scenario(tmp_path / "s2.json").params
    (tmp_path / "m.json").write_text('{"cap_market": 5}')
    with pytest.raises(ScenarioError, match=r"params.cap_market: unknown parameter; it is a parameter of CLSC-2"):
        load_params(tmp_path / "m.json", Params)
    for draw in (draw_scenarios, draw_scenarios2):
        with pytest.raises(ScenarioError, match="seeds=-1: a count of scenarios must be >= 0"):
            draw(-1)


def test_yaml_aliases_that_expand_without_end_are_refused(tmp_path):
    from moca.regime import MOST_YAML_VALUES, load_schedule, load_sequence
    from moca.scenario import ScenarioError, load_params

    regime = tmp_path / "bomb.yaml"
    regime.write_text("\n".join(_laughs()) + "\ncarbon_tax: *i\n")  # validating it never ended
    with pytest.raises(RegimeError, match=f"bomb.yaml: its aliases expand to more than {MOST_YAML_VALUES:,} values"):
        load_regime(regime)
    with pytest.raises(RegimeError, match="aliases expand"):
        load_schedule(regime)
    sequence = tmp_path / "sequence.yaml"
    sequence.write_text("- T1\n- x: &x [1, 2]\n" + "\n".join("  " + line for line in _laughs()) + "\n")
    with pytest.raises(RegimeError, match="sequence.yaml: its aliases expand"):
        load_sequence(sequence)
    with pytest.raises(ScenarioError, match="--params .*bomb.yaml: its aliases expand"):
        load_params(regime)
    # aliases of a sane size are YAML like any other
    shared = tmp_path / "shared.yaml"
    shared.write_text("- &t2 {recycled_content_min: 0.2, carbon_tax: 50}\n- *t2\n- T3\n")
    first, second = load_sequence(shared)[:2]
    assert first[1] == second[1] and first[1].carbon_tax == 50.0


def test_an_empty_regime_file_is_named(tmp_path):
    from moca.regime import load_schedule

    for text in ("", "# a comment only\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        with pytest.raises(RegimeError, match="empty.yaml: empty"):
            load_schedule(path)
        with pytest.raises(RegimeError, match="empty.yaml"):
            load_regime(path)


def test_every_reader_says_where_a_file_does_not_parse(tmp_path):
    """Regime, scenario, actions, checkpoint and metrics files: one wording, the parser's
    complaint with the 1-based line and column where it found it."""
    import torch

    from moca import checkpoint
    from moca.checkpoint import CheckpointError
    from moca.report import ReportError, write_report_from_file
    from moca.scenario import ScenarioError, load_actions, load_scenario

    (tmp_path / "bad.yaml").write_text("carbon_tax: 10\nrecycled_content_min: [0.1, 0.2\n")
    with pytest.raises(RegimeError, match=r"bad.yaml: malformed YAML \(expected ',' or '\]', but got '<stream end>' "
                                          r"at line 3 column 1\)"):
        load_regime(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text('{\n  "carbon_tax": 10,\n  oops\n}')
    where = r"malformed JSON \(Expecting property name enclosed in double quotes at line 3 column 3\)"
    with pytest.raises(RegimeError, match="bad.json: " + where):
        load_regime(tmp_path / "bad.json")
    with pytest.raises(ScenarioError, match="scenario: " + where):
        load_scenario(tmp_path / "bad.json")
    with pytest.raises(ScenarioError, match="actions: " + where):
        load_actions(tmp_path / "bad.json", 52)
    with pytest.raises(ReportError, match="bad.json: " + where):
        write_report_from_file(tmp_path / "bad.json", tmp_path / "out")
    folder = tmp_path / "checkpoint"
    checkpoint.save(folder, {"w": torch.zeros(2)}, {"kind": "test"})
    (folder / checkpoint.META).write_text('{\n  "format": 1,\n  oops\n}')
    with pytest.raises(CheckpointError, match=r"checkpoint.json is not valid JSON \(Expecting property name enclosed "
                                              r"in double quotes at line 3 column 3\)"):
        checkpoint.load(folder)
    (folder / checkpoint.META).write_bytes(b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match=r"checkpoint.json is not valid JSON \(not UTF-8 text\)"):
        checkpoint.load(folder)


def test_numpy_numbers_are_numbers():
    """A regime grid from np.arange holds np.int64; np.bool_ is still refused."""
    grid = [Regime(carbon_tax=tax, recycled_content_window=np.int64(52)) for tax in np.arange(0, 300, 100)]
    assert [r.carbon_tax for r in grid] == [0.0, 100.0, 200.0]
    assert all(type(r.carbon_tax) is float and type(r.recycled_content_window) is int for r in grid)
    assert Regime(emission_cap=np.int32(3000), landfill_tax=np.float32(5)).emission_cap == 3000.0
    assert RegimeSchedule.from_list([{"start": 0}, {"start": np.int64(5)}]).change_periods() == [5]
    with pytest.raises(RegimeError, match="carbon_tax=True is not a number"):
        load_regime({"carbon_tax": np.bool_(True)})


def test_a_schedule_where_one_regime_is_expected_is_named_as_such(tmp_path):
    for text in ("- {start: 0}\n- {start: 5, carbon_tax: 3}\n", "regimes:\n- {start: 0}\n- {start: 9, emission_cap: 5000}\n"):
        path = tmp_path / "plan.yaml"
        path.write_text(text)
        with pytest.raises(RegimeError, match=r"plan.yaml: a regime file must hold one object .* holds a plan of "
                                              r"regimes that change \(a schedule\)"):
            load_regime(path)
        assert load_schedule(path).entries[0].start == 0  # where a schedule is taken, it is one
    path.write_text("- {start: 0, recycled_content_min: 0.1}\n- {start: 7, recycled_content_min: 0.1}\n")
    with pytest.raises(RegimeError, match="holds a plan of regimes"):
        load_regime(path)
    # what is wrong in a plan of one entry is named by the plan's reader, not as "a plan that changes"
    path.write_text("- {start: 0, carbon_tax: -5}\n")
    with pytest.raises(RegimeError, match=r"regimes\[0\]\.carbon_tax"):
        load_regime(path)
    # A plan of one entry is its one regime (it was refused as "a plan of regimes that
    # change"), a scenario file's plan of one regime too; entries alike stay a plan (each
    # start cuts an accounting window).
    for text in ("- {start: 0, recycled_content_min: 0.1}\n", "regimes:\n- {start: 0, recycled_content_min: 0.1}\n"):
        path = tmp_path / "plan.yaml"
        path.write_text(text)
        assert load_regime(path) == Regime(recycled_content_min=0.1)
    from moca.scenario import draw_scenario2

    scenario_file = tmp_path / "scenario.json"
    draw_scenario2(3, Regime(carbon_tax=40.0, recycled_content_window=4)).to_json(scenario_file)
    assert load_regime(scenario_file, model="CLSC-2") == Regime(carbon_tax=40.0, recycled_content_window=4)
    # a task sequence (names and regime objects without start) is named as one, not as a plan
    path.write_text("- T1\n- {name: tight, recycled_content_min: 0.3}\n")
    with pytest.raises(RegimeError, match=r"holds a list of regimes \(a task sequence, for moca continual --sequence\)"):
        load_regime(path)
    path.write_text("just words\n")
    with pytest.raises(RegimeError, match="holds a str"):
        load_regime(path)


def test_library_spellings_that_were_read_silently_or_failed_deep_are_refused_by_name():
    """model='CLSC-3' was read as CLSC-1; a plan list given to load_regime was called an
    unknown name; table(-1) failed in numpy; RegimeSchedule.constant('T1') raised
    AttributeError; make_vector_env(True) made one env; cost_scale='1' raised TypeError."""
    from moca.env import CircularSupplyChainEnv, make_vector_env
    from moca.regime import RegimeError, load_regime, load_schedule

    with pytest.raises(RegimeError, match=r"model='CLSC-3': one of CLSC-1, CLSC-2"):
        load_regime("T1", model="CLSC-3")
    with pytest.raises(RegimeError, match=r"model='clsc-2'"):
        load_schedule("T1", model="clsc-2")
    with pytest.raises(RegimeError, match="got a list, a plan of rules that change; moca.regime.load_schedule"):
        load_regime([{"start": 0}])
    with pytest.raises(RegimeError, match=r"horizon=-1: a whole number of periods >= 0"):
        load_schedule("T1").table(-1)
    assert load_schedule("T1").table(0).shape == (0, 5)
    with pytest.raises(TypeError, match="RegimeSchedule.constant: expected a Regime, got str"):
        RegimeSchedule.constant("T1")
    with pytest.raises(ValueError, match="n=True"):
        make_vector_env(True)
    assert make_vector_env(np.int64(2)).num_envs == 2
    with pytest.raises(ValueError, match="cost_scale='1' must be a finite number > 0"):
        CircularSupplyChainEnv(cost_scale="1")
    with pytest.raises(ValueError, match="accounting windows are CLSC-2's .*moca/CircularSupplyChain2-v0"):
        CircularSupplyChainEnv(regime={"recycled_content_window": 52})  # (at construction since 470c453)


def test_a_yaml_merge_key_may_be_overridden_by_the_mappings_own(tmp_path):
    """YAML's rule: a key written in the mapping overrides one merged from an alias; moca
    refused it as a key given twice (and still refuses the same key written twice)."""
    from moca.regime import load_schedule, read_structured

    plan = tmp_path / "plan.yaml"
    plan.write_text("- &a {start: 0, recycled_content_min: 0.1, carbon_tax: 50}\n"
                    "- {<<: *a, start: 10, recycled_content_min: 0.2}\n")
    assert [(e.start, e.recycled_content_min, e.carbon_tax) for e in load_schedule(plan).entries] == \
        [(0, 0.1, 50.0), (10, 0.2, 50.0)]
    twice = tmp_path / "twice.yaml"
    twice.write_text("- &a {start: 0, carbon_tax: 50}\n- {<<: *a, start: 10, carbon_tax: 5, carbon_tax: 9}\n")
    with pytest.raises(RegimeError, match="key 'carbon_tax' is given twice in one mapping"):
        read_structured(twice)


def test_a_plan_object_says_what_it_does_not_read(tmp_path):
    """{"regimes": [...], "mandate": 0.3} was read as its regimes alone, the rest dropped
    without a word, and a CLSC-2 plan was read on CLSC-1; a scenario file still gives its plan."""
    from moca.regime import load_schedule
    from moca.scenario import draw_scenario

    entries = [{"start": 0, "recycled_content_min": 0.2}]
    with pytest.raises(RegimeError, match=r"^p.json: mandate: unknown key of a plan"):
        (tmp_path / "p.json").write_text(json.dumps({"regimes": entries, "mandate": 0.3}))
        load_schedule(tmp_path / "p.json")
    with pytest.raises(RegimeError, match=r"^mandate: unknown key of a plan"):
        load_schedule({"regimes": entries, "mandate": 0.3})
    with pytest.raises(RegimeError, match=r"model='CLSC-2': a plan of the other world; this command reads CLSC-1's"):
        load_schedule({"regimes": entries, "model": "CLSC-2"})
    assert load_schedule({"regimes": entries, "model": "CLSC-2", "name": "x"}, "CLSC-2").entries[0] \
        .recycled_content_min == 0.2
    scenario = tmp_path / "s.json"
    scenario.write_text(draw_scenario(1, load_schedule(entries)).to_json())
    assert load_schedule(scenario).entries[0].recycled_content_min == 0.2


def test_a_regime_of_another_type_is_named_as_such():
    """regime=5 was read as the name '5' ("unknown regime name")."""
    with pytest.raises(RegimeError, match=r"^regime: expected a name \(T1, eu-ets-2025, ...\), a file or an object of "
                                          r"the regime fields, got int 5$"):
        load_regime(5)
    with pytest.raises(RegimeError, match=r"a file, an object of the regime fields or a plan, got float 2.5$"):
        load_schedule(2.5)


def test_a_row_with_a_none_cap_reads_as_from_row_reads_it():
    """Regime.from_row reads a cap of None as no cap; the row engines' check (regime_rows)
    refused the same row with "emission_cap=nan", a value never written (numpy reads None
    as NaN). A None elsewhere is refused naming the field and None."""
    from moca.world import regime_rows

    row = [0.2, 50.0, None, 0.0, 0.1]
    assert Regime.from_row(row).emission_cap is None
    expected = Regime.from_row(row).as_row()[None]
    for given in (row, tuple(row), np.array(row, dtype=object), row + [7.0]):
        np.testing.assert_array_equal(regime_rows(given), expected)
    np.testing.assert_array_equal(regime_rows([row, [0, 0, 5.0, 0, 0]])[:, 2], [np.inf, 5.0])
    np.testing.assert_array_equal(regime_rows(row, batch=3), np.repeat(expected, 3, axis=0))
    for bad, words in (([0.2, None, 1.0, 0, 0], "regime carbon_tax=None is not a number"),
                       ([None, 0, None, 0, 0], "regime recycled_content_min=None is not a number"),
                       ([2.0, 0, None, 0, 0], "regime recycled_content_min=2.0 is outside its valid range"),
                       ([0, 0, float("nan"), 0, 0], "regime emission_cap=nan is outside its valid range")):
        with pytest.raises(ValueError, match=re.escape(words)):
            regime_rows(bad)


def test_a_json_whole_number_too_long_for_python_is_refused_by_its_field(tmp_path):
    """A whole number of 5,000 digits made Python's int refuse the whole file, with advice
    about sys.set_int_max_str_digits and no field named."""
    from moca.scenario import ScenarioError, load_actions

    for long in ("9" * 310, "1" * 5000):
        (tmp_path / "r.json").write_text('{"carbon_tax": ' + long + "}")
        with pytest.raises(RegimeError, match=r"r.json: carbon_tax=inf"):
            load_regime(tmp_path / "r.json")
        (tmp_path / "a.json").write_text('{"actions": [[0, ' + long + ", 0, 0, 0, 0]]}")
        with pytest.raises(ScenarioError, match=re.escape("actions[0][1]=inf is not finite")):
            load_actions(tmp_path / "a.json", horizon=1)
    (tmp_path / "zeros.json").write_text('{"carbon_tax": 00000000000000000000000000000000000100}')  # (not JSON)
    with pytest.raises(RegimeError, match="malformed JSON"):
        load_regime(tmp_path / "zeros.json")
    (tmp_path / "big.json").write_text('{"carbon_tax": 12345678901234567890}')  # a long int stays an int
    with pytest.raises(RegimeError, match=r"carbon_tax=12345678901234567890 is outside its valid range"):
        load_regime(tmp_path / "big.json")


def test_a_regime_copied_with_changes_is_checked_as_a_new_one():
    """pydantic's model_copy checks nothing: a copy of T2 with carbon_tax=-500 was a regime
    that load_regime and the policies took as it was, where the same values given as a dict
    are refused."""
    from moca.regime import ScheduledRegime

    t2 = TASKS["T2"]
    with pytest.raises(RegimeError, match=r"carbon_tax=-500.0 is outside its valid range"):
        t2.model_copy(update={"carbon_tax": -500.0})
    with pytest.raises(RegimeError, match=r"unknown"):
        t2.model_copy(update={"carbon_taxes": 5.0})
    taxed = t2.model_copy(update={"carbon_tax": 50})
    assert isinstance(taxed, Regime) and taxed.carbon_tax == 50.0 and taxed.recycled_content_min == t2.recycled_content_min
    assert t2.model_copy() == t2
    entry = ScheduledRegime(start=4, carbon_tax=10.0)
    moved = entry.model_copy(update={"start": 8})
    assert isinstance(moved, ScheduledRegime) and moved.start == 8 and moved.carbon_tax == 10.0
    with pytest.raises(RegimeError, match="start"):
        entry.model_copy(update={"start": -1})


def test_a_regime_row_given_where_a_regime_goes_is_named_as_a_row(tmp_path):
    """A row (what decide_period takes) given to the env, draw_scenario or adapt was read as
    a plan: "regimes[0]: expected an object, got float", or "a plan of rules that change"."""
    import moca.env
    from moca.scenario import draw_scenario

    row = [0.2, 100.0, None, 0.0, 0.0]
    words = r"regime: a list of 5 numbers \(a regime row\? recycled_content_min, carbon_tax, .*Regime\.from_row"
    for call in (lambda: load_regime(row), lambda: load_schedule(row), lambda: draw_scenario(1, row),
                 lambda: moca.env.CircularSupplyChainEnv(regime=[0.2, 100.0, 5e3, 0.0, 0.0])):
        with pytest.raises(RegimeError, match=words):
            call()
    with pytest.raises(RegimeError, match=r"regimes\[0\]: expected an object"):  # a plan stays a plan
        load_schedule([None])
    for call in (load_regime, load_schedule):  # (a 0-d array: len() of it was a TypeError)
        with pytest.raises(RegimeError, match="regime: expected a name .* got ndarray"):
            call(np.array(0.2))
    path = tmp_path / "r.yaml"
    path.write_text("model: CLSC-2\nrecycled_content_min: 0.2\nrecycled_content_window: 52\n")
    with pytest.raises(RegimeError, match=r"r\.yaml: model: unknown field .*; a regime object names no world: the "
                                          r"command's --model"):
        load_regime(path, model="CLSC-2")


def test_a_single_regime_object_with_start_says_a_plan_is_a_list_and_big_actions_print_whole(tmp_path):
    with pytest.raises(RegimeError, match="start: unknown field .*; start belongs to the entries of a plan, which is a "
                                          "list of them"):
        load_schedule({"start": 0, "recycled_content_min": 0.1})
    from moca.scenario import ScenarioError, load_actions

    rows = [[0.0] * 6 for _ in range(3)]
    rows[1][2] = 1.000001e12  # (":g" printed "1e+12 must be within ±1e+12")
    (tmp_path / "a.json").write_text(json.dumps({"actions": rows}))
    with pytest.raises(ScenarioError, match=r"\[1\]\[2\]=1000001000000.0 must be within ±1e\+12"):
        load_actions(tmp_path / "a.json", 3)


def test_a_clsc1_window_is_refused_naming_the_file_and_its_entry(tmp_path):
    """A regime file with an accounting window given to a CLSC-1 command was refused by the
    scenario as "regimes[0].recycled_content_window=13" (the file holds one regime, and was
    not named), with the library's advice; `moca adapt` said the same. The library reads
    such a plan as before (a CLSC-2 caller may leave load_schedule's model at its default)."""
    from _cli import run_in_process
    from moca.regime import RegimeError, check_clsc1_windows, load_schedule
    from moca.scenario import ScenarioError, draw_scenario, draw_scenario2

    one = tmp_path / "win13.yaml"
    one.write_text("recycled_content_window: 13\nrecycled_content_min: 0.2\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("- {start: 0}\n- {start: 10, recycled_content_window: 4, recycled_content_min: 0.2}\n")
    advice = "CLSC-1 settles the mandate every period; accounting windows are CLSC-2's (--model CLSC-2)"
    with pytest.raises(RegimeError, match=re.escape(f"win13.yaml: recycled_content_window=13: {advice}")):
        check_clsc1_windows(load_schedule(one), one)
    with pytest.raises(RegimeError, match=re.escape(f"plan.yaml: regimes[1].recycled_content_window=4: {advice}")):
        check_clsc1_windows(load_schedule(plan), str(plan))
    with pytest.raises(RegimeError, match="^" + re.escape(f"recycled_content_window=13: {advice}")):
        check_clsc1_windows(load_schedule(one), "T2")  # (a name, not a file)
    assert [e.recycled_content_window for e in load_schedule(plan).entries] == [1, 4]
    assert draw_scenario2(1, load_schedule(plan)).window_table().max() == 4
    with pytest.raises(ScenarioError, match="regimes\\[1\\].recycled_content_window=4: CLSC-1 settles"):
        draw_scenario(1, load_schedule(plan))  # the library's refusal, as before
    for command in (("evaluate", "--policy", "threshold"), ("adapt", "--checkpoint", "default", "--steps", 0),
                    ("scenario", "new", "--seed", 1, "-o", tmp_path / "s.json")):
        out = run_in_process(*command, "--regime", one, *(() if command[0] == "scenario" else ("--scenarios", 1)))
        assert out.returncode == 2 and out.stderr.startswith(f"moca: error: win13.yaml: recycled_content_window=13: "
                                                             f"{advice}"), out.stderr
    assert not (tmp_path / "s.json").exists()
