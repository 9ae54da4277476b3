import json

import pytest
import torch

from moca import checkpoint
from moca.checkpoint import CheckpointError
from _checkpoints import write_meta


def _weights():
    torch.manual_seed(0)
    return {"layer.weight": torch.randn(4, 3), "layer.bias": torch.randn(4)}


def test_round_trip(tmp_path):
    weights = _weights()
    checkpoint.save(tmp_path / "ck", weights, {"config": {"hidden": 4}, "seed": 3})
    loaded, meta = checkpoint.load(tmp_path / "ck")
    assert meta["seed"] == 3 and meta["config"] == {"hidden": 4} and "torch" in meta["versions"]
    for k, v in weights.items():
        assert torch.equal(loaded[k], v)
    # Saving again over an existing checkpoint replaces it whole.
    checkpoint.save(tmp_path / "ck", {k: v * 2 for k, v in weights.items()}, {"seed": 4})
    loaded, meta = checkpoint.load(tmp_path / "ck")
    assert meta["seed"] == 4 and torch.equal(loaded["layer.bias"], weights["layer.bias"] * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_corrupted_weights_refused(tmp_path):
    path = checkpoint.save(tmp_path / "ck", _weights(), {})
    data = bytearray((path / checkpoint.WEIGHTS).read_bytes())
    data[-3] ^= 0xFF
    (path / checkpoint.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        checkpoint.load(path)


def test_truncated_and_missing_files_refused(tmp_path):
    path = checkpoint.save(tmp_path / "ck", _weights(), {})
    meta = json.loads((path / checkpoint.META).read_text())
    (path / checkpoint.WEIGHTS).write_bytes((path / checkpoint.WEIGHTS).read_bytes()[:40])
    import hashlib

    meta["weights_sha256"] = hashlib.sha256((path / checkpoint.WEIGHTS).read_bytes()).hexdigest()
    write_meta(path, meta)
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoint.load(path)
    (path / checkpoint.META).write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(path)
    (path / checkpoint.META).unlink()
    with pytest.raises(CheckpointError, match="missing checkpoint.json"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="no such directory"):
        checkpoint.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="weights.safetensors: not a directory .a checkpoint is a directory "
                                              "holding checkpoint.json and weights.safetensors."):
        checkpoint.load(path / checkpoint.WEIGHTS)  # the weights file for its folder: not "no such directory"


@pytest.mark.parametrize("name", ["default", "default-clsc2"])
def test_an_edited_checkpoint_json_is_refused(tmp_path, name):
    """The JSON says how the weights are used: ``structured: false`` in a copy of the shipped
    meta-init rebuilt a policy without its base rule from the same weights (0.12 instead of
    0.97 on T1, without a word), and a deleted ``policy`` block loaded the defaults."""
    import shutil
    from importlib.resources import files

    from moca.meta2 import load_policy2

    load = checkpoint.load_policy if name == "default" else load_policy2
    path = tmp_path / name
    shutil.copytree(str(files("moca") / "data" / name), path)
    load(path)  # the copy as shipped loads
    text = (path / checkpoint.META).read_text()
    for edited in (text.replace('"structured": true', '"structured": false'),
                   json.dumps({k: v for k, v in json.loads(text).items() if k != "policy"}, indent=1)):
        assert edited != text
        (path / checkpoint.META).write_text(edited)
        with pytest.raises(CheckpointError, match=r"checkpoint.json was altered after it was written"):
            load(path)
    indented = json.dumps(json.loads(text), indent=4)  # the same content laid out otherwise: the same digest
    (path / checkpoint.META).write_text(indented)
    load(path)


def test_a_checkpoint_without_a_json_digest_loads_and_the_digest_is_moca_s_own(tmp_path):
    path = checkpoint.save(tmp_path / "ck", _weights(), {"seed": 3})
    meta = json.loads((path / checkpoint.META).read_text())
    assert meta[checkpoint.META_DIGEST] == checkpoint.metadata_digest(meta)
    del meta[checkpoint.META_DIGEST]  # as written before the digest was recorded
    (path / checkpoint.META).write_text(json.dumps(meta))
    assert checkpoint.load(path)[1]["seed"] == 3
    with pytest.raises(CheckpointError, match="metadata_sha256 is the checkpoint's own"):
        checkpoint.save(tmp_path / "other", _weights(), {checkpoint.META_DIGEST: "0" * 64})


def test_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "ck"
    path.mkdir()
    torch.save(_weights(), path / checkpoint.WEIGHTS)  # a pickle in disguise
    (path / checkpoint.META).write_text(json.dumps({"format": checkpoint.FORMAT, "weights_sha256": "x"}))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def test_metadata_json_cannot_hold_and_a_path_of_the_wrong_kind_are_named(tmp_path):
    """A value JSON cannot hold is named by where it sits in the metadata (and nothing is
    written); a checkpoint argument that is no path says so (was a TypeError from pathlib)."""
    module = torch.nn.Linear(3, 5)
    with pytest.raises(CheckpointError, match=r"metadata\.run\.seeds\[1\]: not JSON serialisable: object"):
        checkpoint.save(tmp_path / "ck", dict(module.state_dict()), {"run": {"seeds": [1, object()]}})
    assert not (tmp_path / "ck").exists() and not list(tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="checkpoint: expected a directory path or a shipped name .* got NoneType"):
        checkpoint.load_policy(None)


def test_metadata_numbers_json_has_not_are_written_as_null(tmp_path):
    """NaN and infinity are not JSON: the file is strict JSON (jq and JavaScript read it), the
    numbers read back as None, and the checkpoint loads."""
    import math

    checkpoint.save(tmp_path / "ck", _weights(), {"history": [{"score": math.nan}, {"score": 0.9}],
                                                  "limit": math.inf, "tensor": torch.tensor([1.0, -math.inf])})

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    text = (tmp_path / "ck" / "checkpoint.json").read_text()
    strict = json.loads(text, parse_constant=refuse)
    assert strict["history"] == [{"score": None}, {"score": 0.9}] and strict["limit"] is None
    assert strict["tensor"] == [1.0, None]
    _, meta = checkpoint.load(tmp_path / "ck")
    assert meta["history"][0]["score"] is None and meta["limit"] is None


def test_mismatched_module_refused(tmp_path):
    module = torch.nn.Linear(3, 5)
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.check_compatible(_weights(), module, tmp_path)


@pytest.mark.parametrize("name, model", [("default", "CLSC-1"), ("default-clsc2", "CLSC-2")])
def test_invalid_params_or_policy_say_the_rule_they_break(tmp_path, name, model):
    import shutil
    from importlib.resources import files

    from moca.meta2 import load_policy2

    load = checkpoint.load_policy if model == "CLSC-1" else load_policy2
    for block, change, message in (("params", {"mass": -1.0}, "params.mass=-1.0 must be > 0"),
                                   ("policy", {"window": "two"}, "window='two' is text, not a number")):
        path = tmp_path / f"{name}-{block}"
        shutil.copytree(str(files("moca") / "data" / name), path)
        meta = json.loads((path / checkpoint.META).read_text())
        meta[block].update(change)
        write_meta(path, meta)
        with pytest.raises(CheckpointError, match="invalid params/policy") as info:
            load(path)
        assert message in str(info.value)  # the rule, not only the field's name


def test_a_checkpoint_of_another_kind_or_world_is_refused_saying_what_it_is():
    """Each loader names another world's checkpoint by its world (and --model), and one of
    its own world but another kind by what it is and what takes it (before: 'not a policy
    checkpoint', 'not a PPO checkpoint', or a matrix-shape error)."""
    from moca.baselines.ppo import load_ppo, shipped_path
    from moca.meta2 import load_policy2

    with pytest.raises(CheckpointError, match=r"a PPO policy of CLSC-1, not of CLSC-2 \(use --model CLSC-1"):
        load_policy2(shipped_path("CLSC-1"))
    with pytest.raises(CheckpointError, match=r"a PPO policy \(kind 'sb3-ppo'\).*score it with moca evaluate"):
        checkpoint.load_policy(shipped_path("CLSC-1"))
    with pytest.raises(CheckpointError, match=r"a policy of CLSC-1, not of CLSC-2 \(use --model CLSC-1"):
        load_ppo("default", "CLSC-2")
    with pytest.raises(CheckpointError, match=r"a policy \(kind 'lstm-policy'\), where a 'sb3-ppo' checkpoint"):
        load_ppo("default")
    mapped = checkpoint.refuse("m", {"kind": "mapped-policy", "model": "CLSC-1"}, "CLSC-1", "lstm-policy")
    assert "a policy over a mapped threshold rule (kind 'mapped-policy')" in str(mapped)
    assert "moca continual learns over the threshold rule" in str(mapped)
    planner = checkpoint.refuse("p", {"kind": "mpc-planner", "model": "CLSC-2"}, "CLSC-1", "lstm-policy")
    assert "a planner (the sampled MPC that moca adapt deployed) of CLSC-2, not of CLSC-1" in str(planner)
    unknown = checkpoint.refuse("u", {"kind": "something"}, "CLSC-1", "lstm-policy")
    # (named after the loader tried last: a CLSC-2 policy of no known kind was "not a 'sb3-ppo' checkpoint")
    assert str(unknown) == ("checkpoint u: kind='something' is no kind of moca checkpoint (lstm-policy, mapped-policy, "
                            "mpc-policy, mpc-planner, sb3-ppo)")
    # a world moca does not have (a hand-edited checkpoint) was told "use --model CLSC-9"
    alien = checkpoint.refuse("a", {"kind": "lstm-policy", "model": "CLSC-9"}, "CLSC-2", "lstm-policy")
    assert str(alien) == "checkpoint a: model: 'CLSC-9' is no world of moca (CLSC-1 or CLSC-2)"


def test_a_ppo_checkpoint_of_no_known_world_is_named_so(tmp_path):
    """A PPO checkpoint is loaded by its own loader, which said "use --model CLSC-9"."""
    import json
    import shutil

    from _cli import assert_bad_input, run_in_process

    from moca.baselines.ppo import shipped_path

    folder = tmp_path / "ppo9"
    shutil.copytree(shipped_path("CLSC-1"), folder)
    meta = json.loads((folder / "checkpoint.json").read_text())
    meta["model"] = "CLSC-9"
    meta[checkpoint.META_DIGEST] = checkpoint.metadata_digest(meta)
    (folder / "checkpoint.json").write_text(json.dumps(meta))
    for world in ("CLSC-1", "CLSC-2"):
        result = run_in_process("evaluate", "--policy", folder, "--model", world, "--scenarios", 1)
        assert_bad_input(result, "model: 'CLSC-9' is no world of moca (CLSC-1 or CLSC-2)")


def test_metadata_may_not_replace_what_rebuilds_or_checks_the_checkpoint(tmp_path):
    """{"params": ...} reloaded a policy on another chain without a word, {"weights_sha256":
    ...} made the checkpoint read as corrupted, {"kind": ...} made it unloadable."""
    from moca.policy import LSTMPolicy, PolicyConfig
    from moca.scenario import Params

    module = LSTMPolicy(Params(horizon=5), PolicyConfig(hidden=8))
    for metadata, message in (({"params": {"horizon": 9}}, "metadata: params is the checkpoint's own"),
                              ({"kind": "other", "model": "CLSC-2"}, "metadata: kind, model are the checkpoint's own"),
                              ({"weights_sha256": "abc"}, "metadata: weights_sha256 is the checkpoint's own")):
        with pytest.raises(CheckpointError, match=message):
            checkpoint.save_policy(tmp_path / "ck", module, metadata)
        assert not (tmp_path / "ck").exists() and list(tmp_path.iterdir()) == []  # nothing half-written
    checkpoint.save_policy(tmp_path / "ck", module, {"note": "mine"})
    loaded, meta = checkpoint.load_policy(tmp_path / "ck")
    assert loaded.params.horizon == 5 and meta["note"] == "mine"


def test_a_policy_is_saved_only_as_its_own_kind_and_never_under_a_shipped_name(tmp_path, monkeypatch):
    """``save_policy`` wrote a policy over the rolling LP as a plain policy (it loaded back
    without its base rule and acted otherwise) and a CLSC-2 policy labelled CLSC-1 (never
    loaded back); ``save_policy("default")`` wrote ./default, which loading "default" skips
    for the shipped meta-init."""
    from moca.meta2 import load_policy2, save_policy2
    from moca.mpc_base import MPCBasePolicy
    from moca.policy import LSTMPolicy

    plain, _ = checkpoint.load_policy("default")
    clsc2, _ = load_policy2("default")
    with pytest.raises(CheckpointError, match=r"module: a MPCBasePolicy, not a plain CLSC-1 LSTMPolicy; save it "
                                              r"with moca\.mpc_base\.save_mpc_policy"):
        checkpoint.save_policy(tmp_path / "a", MPCBasePolicy(plain.params, plain.config, 400.0), {})
    with pytest.raises(CheckpointError, match=r"module: a LSTMPolicy2, .* moca\.meta2\.save_policy2"):
        checkpoint.save_policy(tmp_path / "b", clsc2, {})
    with pytest.raises(CheckpointError, match=r"module: a LSTMPolicy, not a CLSC-2 LSTMPolicy2"):
        save_policy2(tmp_path / "c", plain, {})
    from moca.regime_map import save_learned_policy

    class Mine(LSTMPolicy):
        pass

    for module in (Mine(), torch.nn.Linear(2, 2)):  # (no saver of moca's rebuilds them: not "use its own saver")
        with pytest.raises(CheckpointError, match=f"module: a {type(module).__name__}; moca saves its own policies "
                                                  "only"):
            save_learned_policy(tmp_path / "d", module, {})
    assert not list(tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    for name in ("default", "default-reptile"):
        with pytest.raises(CheckpointError, match=f"{name}: the name of a shipped meta-init"):
            checkpoint.save_policy(name, LSTMPolicy(), {})
    assert not list(tmp_path.iterdir())
    checkpoint.save_policy("./mine", plain, {})  # any other folder
    assert torch.equal(checkpoint.load_policy("./mine")[0].head.bias, plain.head.bias)


def test_save_refuses_what_it_would_write_wrongly_or_unreadably(tmp_path):
    nan = {"layer.weight": torch.full((2, 2), float("nan"))}
    with pytest.raises(CheckpointError, match=r"weights\['layer\.weight'\]: holds NaN or infinite values"):
        checkpoint.save(tmp_path / "a", nan, {})
    import numpy as np

    with pytest.raises(CheckpointError, match=r"weights\['w'\]: expected a torch tensor, got ndarray"):
        checkpoint.save(tmp_path / "b", {"w": np.zeros(3)}, {})
    for metadata in ({1: "a", "1": "b"}, {"run": {"seed": 1, 2: "x", "2": "y"}}):  # (JSON kept one of the two)
        with pytest.raises(CheckpointError, match=r"metadata: key '(1|2)' is given twice in one object .* 1 and \"1\" "
                                                  r"are one key"):
            checkpoint.save(tmp_path / "c", _weights(), metadata)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["default", "default-clsc2"])
def test_a_policy_checkpoint_without_its_params_or_policy_block_is_refused(tmp_path, name):
    """Without the digest (a checkpoint of before it) a removed ``policy`` block loaded the
    default settings under the checkpoint's weights (safety stock 300 where 900 was trained)."""
    import shutil
    from importlib.resources import files

    from moca.meta2 import load_policy2

    load = checkpoint.load_policy if name == "default" else load_policy2
    path = tmp_path / name
    shutil.copytree(str(files("moca") / "data" / name), path)
    meta = json.loads((path / checkpoint.META).read_text())
    for key in ("policy", "params"):
        write_meta(path, {k: v for k, v in meta.items() if k not in (key, checkpoint.META_DIGEST)})
        with pytest.raises(CheckpointError, match=f"checkpoint.json: {key}: missing"):
            load(path)
    write_meta(path, {k: v for k, v in meta.items() if k not in ("weights_sha256", checkpoint.META_DIGEST)})
    with pytest.raises(CheckpointError, match="checkpoint.json has no weights_sha256"):
        load(path)
