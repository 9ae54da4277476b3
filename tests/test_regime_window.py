"""The sixth regime field, recycled_content_window (CLSC-2), and the accounting windows."""

import json

import numpy as np
import pytest

from moca.regime import (Regime, RegimeError, RegimeSchedule, TASKS, load_regime, window_ids,
                         window_periods_left, window_starts)


def test_window_default_keeps_clsc1_dump_to_five_fields():
    dumped = TASKS["T1"].model_dump()
    assert list(dumped) == ["recycled_content_min", "carbon_tax", "emission_cap", "landfill_tax", "recovery_target"]
    assert "recycled_content_window" not in json.dumps(Regime().model_dump(mode="json"))
    assert Regime(recycled_content_window=52).model_dump()["recycled_content_window"] == 52
    assert Regime(**Regime(recycled_content_window=52).model_dump()) == Regime(recycled_content_window=52)
    assert TASKS["T1"].describe() == "r=0.10"
    assert Regime(recycled_content_min=0.2, recycled_content_window=52).describe() == "r=0.20 W=52"
    # two decimals where they say it all (0.301 and 0.304 both read r=0.30, one rule in a table)
    assert Regime(recycled_content_min=0.301, recovery_target=0.125).describe() == "r=0.301 kappa=0.125"


def test_sequence_labels_tell_a_rule_that_comes_back_from_another_under_the_same_label():
    """A label used again was "#2" whether the rule came back or another came under it (an
    object labelled T1 beside the task T1), and "#2" could be a label the user gave elsewhere."""
    from moca.cli import _unique_labels

    t1, other = Regime(recycled_content_min=0.1, recycled_content_window=52), Regime(recycled_content_min=0.1)
    labels = [label for label, _ in _unique_labels([("T1", t1), ("T1", other), ("T1", t1), ("T1 #2", other)])]
    assert labels == ["T1", "T1 (r=0.10)", "T1 #3", "T1 #2"]
    assert [label for label, _ in _unique_labels([("A", t1), ("B", other), ("A", t1)])] == ["A", "B", "A #2"]
    # another rule that comes back under its told label: numbered from #2 (it skipped to #3)
    assert [label for label, _ in _unique_labels([("A", t1), ("A", other), ("A", other), ("A", t1)])] == [
        "A", "A (r=0.10)", "A (r=0.10) #2", "A #2"]


@pytest.mark.parametrize("bad", [0, 105, 2.5, True, "52", float("nan"), float("inf"), -float("inf"), 1e300, None])
def test_window_out_of_range_refused_naming_field(bad):
    with pytest.raises(RegimeError, match="recycled_content_window"):
        load_regime({"recycled_content_window": bad})


def test_window_whole_float_accepted():
    assert load_regime({"recycled_content_window": 52.0}).recycled_content_window == 52


def test_windows_are_calendar_blocks_cut_at_changes_and_horizon():
    schedule = RegimeSchedule.from_list([
        {"start": 0, "recycled_content_window": 4},
        {"start": 6, "recycled_content_window": 5},
    ])
    assert window_starts(schedule, 13).astype(int).tolist() == [1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0]
    assert window_ids(schedule, 13).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert window_periods_left(schedule, 13).tolist() == [3, 2, 1, 0, 1, 0, 3, 2, 1, 0, 2, 1, 0]
    assert schedule.window_table(8).tolist() == [4] * 6 + [5] * 2


def test_window_one_is_every_period_and_change_starts_window_even_same_regime():
    one = RegimeSchedule.constant(Regime())
    assert window_periods_left(one, 5).tolist() == [0] * 5
    same = RegimeSchedule.from_list([{"start": 0, "recycled_content_window": 52},
                                     {"start": 3, "recycled_content_window": 52}])
    assert window_periods_left(same, 6).tolist() == [2, 1, 0, 2, 1, 0]
    year = RegimeSchedule.constant(Regime(recycled_content_window=52))
    left = window_periods_left(year, 60)
    assert left[0] == 51 and left[51] == 0 and left[52] == 7 and left[59] == 0
    assert np.all(window_periods_left(year, 0) == np.array([], dtype=np.int64))
