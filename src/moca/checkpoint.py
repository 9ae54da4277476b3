"""Checkpoints: ``weights.safetensors`` plus ``checkpoint.json`` in a directory.

No pickle anywhere: tensors load through safetensors, metadata through JSON, and the JSON
records the SHA-256 of the weights and of itself, so a truncated or altered file is
refused with a clear message instead of loading wrong numbers or another policy (the
JSON says how the weights are used: ``structured: false`` in it rebuilt a policy without
its base rule from the same weights).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shutil
import tempfile
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch

from moca.files import exchange_paths, parse_problem, publish_tree, unique_keys
from moca.scenario import MODELS

FORMAT = "moca-checkpoint/1"
WEIGHTS = "weights.safetensors"
META = "checkpoint.json"
#: The JSON's own SHA-256 (over its other keys, canonical form); checkpoints written before
#: it was recorded load without it.
META_DIGEST = "metadata_sha256"
#: Meta-inits shipped in the package, by the name that stands for their directory.
SHIPPED = {"default": "default", "default-reptile": "reptile"}


class CheckpointError(ValueError):
    """A missing, corrupted or mismatched checkpoint."""


#: What moca writes in a checkpoint folder (a PPO policy's adds its learning curve). A save
#: replaces its folder whole, so a folder holding anything else is refused, never emptied.
CHECKPOINT_FILES = frozenset({META, WEIGHTS, "learning_curve.json", "learning_curve.png"})


#: moca's own temporary file of a checkpoint's learning curve, left by a kill while it was
#: written; it made moca refuse its own PPO checkpoint folder as "not a moca checkpoint's files".
_LEFTOVER = re.compile(r"\.learning_curve\..+\.tmp(\.png)?")  # (moca.files.replace_with's names)


def check_replaceable(directory: str | Path, label: str | None = None) -> None:
    """Refuse to write a checkpoint over ``directory`` when it holds files of another kind
    (``-o ~/plant`` would have deleted the user's files); new, empty and checkpoint folders pass.
    A shipped meta-init's name is refused too: ``default`` wrote ./default, and loading
    ``default`` gave the shipped policy back."""
    label = label or str(directory)
    if str(directory) in SHIPPED:
        raise CheckpointError(f"{label}: the name of a shipped meta-init, which loading it reads; give another "
                              f"folder (e.g. ./{directory}-mine)")
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise CheckpointError(f"{label}: exists and is not a directory")
    if directory.resolve() == Path.cwd().resolve():  # (an empty -o reads as it: the minutes of training
        # ended in "could not write . (Device or resource busy)", the folder in use cannot be replaced)
        raise CheckpointError(f"{label}: the current folder (an empty path reads as it), which a checkpoint cannot "
                              "replace: it replaces its folder whole; give a new folder (e.g. ./ckpt)")
    others = sorted(p.name for p in directory.iterdir()
                    if p.name not in CHECKPOINT_FILES and not _LEFTOVER.fullmatch(p.name))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise CheckpointError(f"{label}: holds {shown}, not a moca checkpoint's files; a checkpoint replaces "
                              "its folder whole, so give a new folder (or an older checkpoint's)")


def resolve(path: str | Path) -> Path:
    """``default`` (FOMAML) and ``default-reptile`` name the shipped meta-inits; anything
    else is a directory path."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint: expected a directory path or a shipped name ({', '.join(SHIPPED)}), "
                              f"got {type(path).__name__}")
    if str(path) in SHIPPED:
        return Path(str(resources.files("moca") / "data" / SHIPPED[str(path)]))
    return Path(path)


def versions() -> dict[str, str]:
    import numpy

    import moca

    return {"moca": moca.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def merged(own: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """A writer's own keys with the caller's ``metadata`` beside them; a caller's key that
    would replace one of the writer's is refused: ``{"params": ...}`` reloaded the policy
    on another chain, ``{"weights_sha256": ...}`` made the checkpoint read as corrupted."""
    taken = sorted(set(own) & set(metadata))
    if taken:
        raise CheckpointError(f"metadata: {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} the checkpoint's "
                              "own (what rebuilds and checks it); use other keys")
    return {**own, **metadata}


def save(directory: str | Path, weights: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (a temporary directory renamed into place)."""
    from safetensors.torch import save_file

    check_replaceable(directory)
    check_saved(weights, metadata)
    directory = Path(directory)
    if directory.is_symlink():  # (a rename over the link replaced it, its target kept the old checkpoint)
        directory = Path(os.path.realpath(directory))
        check_replaceable(directory)  # (the target is what is replaced)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
        try:
            save_file(tensors, str(staging / WEIGHTS))
        except Exception as err:  # safetensors' own error type: a full disk was an "internal error"
            code = re.search(r"code: (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(directory)) from None
        digest = hashlib.sha256((staging / WEIGHTS).read_bytes()).hexdigest()
        meta = merged({
            "format": FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "weights_sha256": digest,
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            META_DIGEST: None,  # (set below, over the rest; here so that merged() keeps it the writer's)
        }, metadata)
        try:  # as load() will read it back: {1: "a", "1": "b"} at any depth kept one of them
            meta = _finite(json.loads(json.dumps(meta, default=_jsonable), object_pairs_hook=unique_keys))
        except TypeError as err:
            raise CheckpointError(f"metadata{_unwritable(meta)}: {err}") from None
        except ValueError as err:
            raise CheckpointError(f"metadata: {err} (JSON keys are text: 1 and \"1\" are one key)") from None
        meta[META_DIGEST] = metadata_digest(meta)
        (staging / META).write_text(json.dumps(meta, indent=1, allow_nan=False))
        publish_tree(staging)  # mkdtemp made it private; a checkpoint gets the user's umask
        if directory.exists() and exchange_paths(staging, directory):
            # One step: the name is never missing (two renames had a moment without it, and a
            # kill there left the checkpoint only under a hidden name); the old one, now under
            # the staging name, goes.
            shutil.rmtree(staging, ignore_errors=True)
        elif directory.exists():
            # A fresh name for the old one (a user's own ".NAME.old" beside it was deleted):
            # an empty folder, which a rename may replace.
            backup = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old."))
            try:
                os.replace(directory, backup)
            except BaseException:
                backup.rmdir()
                raise
            try:
                os.replace(staging, directory)
            except BaseException:
                os.replace(backup, directory)  # (the old checkpoint back under its name)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def check_saved(weights: Any, metadata: Any) -> None:
    """Refuse what :func:`save` would write wrongly or unreadably, by name: weights that are
    not a dict of finite tensors (NaN weights were written, and every load refused them),
    metadata that is not a dict (keys that JSON would merge are refused by :func:`save`)."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"weights: expected a dict of name -> torch tensor, got {type(weights).__name__}")
    for name, tensor in weights.items():
        if not isinstance(name, str):
            raise CheckpointError(f"weights: key {name!r} is not text")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"weights[{name!r}]: expected a torch tensor, got {type(tensor).__name__}")
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise CheckpointError(f"weights[{name!r}]: holds NaN or infinite values (a checkpoint of it could "
                                  "never be loaded)")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"metadata: expected a dict, got {type(metadata).__name__}")


def metadata_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's JSON without its own digest: keys sorted, no spaces, so
    the digest does not depend on how the file is indented."""
    rest = {k: v for k, v in meta.items() if k != META_DIGEST}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def declared_kind(directory: str | Path) -> str | None:
    """The ``kind`` a checkpoint's JSON declares, to choose its loader; None when it cannot
    be read (the loader then says why, by name)."""
    try:
        meta = json.loads((resolve(directory) / META).read_text())
        return meta.get("kind") if isinstance(meta, dict) else None
    except (OSError, ValueError, RecursionError):  # (ValueError: bad UTF-8 or JSON)
        return None


def load(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; every failure is a :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = resolve(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory}: " + (
            f"not a directory (a checkpoint is a directory holding {META} and {WEIGHTS})" if directory.exists()
            else "no such directory"))
    meta_path, weights_path = directory / META, directory / WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory}: missing {path.name}")
    try:
        meta = json.loads(meta_path.read_text(), object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {directory}: {META} is not valid JSON ({parse_problem(err)})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"checkpoint {directory}: {META} is not valid JSON (not UTF-8 text)") from None
    except ValueError as err:  # (a key given twice)
        raise CheckpointError(f"checkpoint {directory}: {META}: {err}") from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {directory}: {META} is nested too deeply to be a checkpoint's") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {directory}: {META} is not a {FORMAT} file")
    if META_DIGEST in meta and meta[META_DIGEST] != metadata_digest(meta):
        raise CheckpointError(f"checkpoint {directory}: {META} was altered after it was written (its SHA-256 "
                              f"does not match its {META_DIGEST}); it says how the weights are used, so an edited "
                              "one is not loaded: save the policy again instead")
    if "weights_sha256" not in meta:
        raise CheckpointError(f"checkpoint {directory}: {META} has no weights_sha256 (every checkpoint moca writes "
                              "records it)")
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    if digest != meta["weights_sha256"]:
        raise CheckpointError(f"checkpoint {directory}: {WEIGHTS} is corrupted (SHA-256 does not match {META})")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {directory}: cannot read {WEIGHTS} ({err})") from None
    expected = meta.get("tensors", {})
    shapes = {k: list(v.shape) for k, v in weights.items()}
    if shapes != expected:
        raise CheckpointError(f"checkpoint {directory}: tensors in {WEIGHTS} do not match {META}")
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"checkpoint {directory}: tensor {name!r} holds NaN or infinite values")
    return weights, meta


#: Each kind of checkpoint in words, for a loader that cannot take it, and what to do with it.
KINDS: dict[str, tuple[str, str]] = {
    "lstm-policy": ("a policy", "moca evaluate, adapt, continual and serve take it"),
    "mapped-policy": ("a policy over a mapped threshold rule", "moca evaluate, adapt and serve take it; "
                                                               "moca continual learns over the threshold rule"),
    "mpc-policy": ("a policy over the rolling LP", "moca evaluate, adapt and serve take it; moca continual "
                                                   "learns over the threshold rule"),
    "mpc-planner": ("a planner (the sampled MPC that moca adapt deployed)", "score it with moca evaluate --model "
                                                                           "CLSC-2 --policy DIR; it has no weights "
                                                                           "to adapt, continue or serve"),
    "sb3-ppo": ("a PPO policy", "score it with moca evaluate --policy DIR; it has nothing moca adapts, "
                                "continues or serves"),
}


def unknown_world(where: str, model: Any) -> CheckpointError:
    """A checkpoint whose JSON names a world moca does not have (hand-edited)."""
    return CheckpointError(f"{where}: model: {model!r} is no world of moca ({' or '.join(MODELS)})")


def refuse(where: str | Path, meta: dict[str, Any], model: str | None, wanted: str) -> CheckpointError:
    """The one-line error for checkpoint ``where`` (its JSON ``meta``) that a loader of the
    world ``model`` (None: either) expecting kind ``wanted`` cannot take: the other world
    first (with its ``--model``), else what the checkpoint is and what takes it."""
    kind, theirs = meta.get("kind"), meta.get("model", "CLSC-1")  # (CLSC-1 checkpoints predate "model")
    what, use = KINDS.get(kind, (None, None))
    if what is None:
        # (named after the last loader tried: a CLSC-2 policy without a kind was "not a 'sb3-ppo' checkpoint")
        return CheckpointError(f"checkpoint {where}: kind={kind!r} is no kind of moca checkpoint ({', '.join(KINDS)})")
    if theirs not in MODELS:  # (a hand-edited "CLSC-9" was told "use --model CLSC-9")
        return unknown_world(f"checkpoint {where}", theirs)
    if model is not None and theirs != model:
        return CheckpointError(f"checkpoint {where}: {what} of {theirs}, not of {model} (use --model {theirs}, "
                               f"or a {model} policy)")
    return CheckpointError(f"checkpoint {where}: {what} (kind {kind!r}), where a {wanted!r} checkpoint is needed: "
                           f"{use}")


def load_kind(directory: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """:func:`load` a checkpoint that must declare ``kind``: its weights, its JSON and its path."""
    weights, meta = load(directory)
    where = resolve(directory)
    if meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint {where}: kind: {meta.get('kind')!r}, expected {kind!r}")
    return weights, meta, where


def blocks(meta: dict[str, Any], where: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A policy checkpoint's ``params`` and ``policy`` blocks (keyword arguments of
    ``Params``/``Params2`` and ``PolicyConfig``); a block missing is refused by name: read
    as empty, the policy was rebuilt on the default chain and settings (another safety
    stock, another residual scale) under the checkpoint's weights."""
    found = []
    for key in ("params", "policy"):
        block = meta.get(key)
        if not isinstance(block, dict):
            raise CheckpointError(f"checkpoint {where}: {META}: {key}: " + ("missing (every policy checkpoint "
                                  "moca writes records it)" if block is None else f"expected an object, got "
                                  f"{type(block).__name__}"))
        found.append(block)
    return found[0], found[1]


def build_module(where: Path, make: Callable[[], torch.nn.Module],
                 own_errors: tuple[type[Exception], ...] = ()) -> torch.nn.Module:
    """``make()`` (the module a checkpoint's JSON describes), its failures as one-line
    :class:`CheckpointError` naming the checkpoint: ``own_errors`` as they say (they name
    the field), an invalid ``params``/``policy`` block by pydantic's first line."""
    from pydantic import ValidationError

    from moca.scenario import validation_reason

    try:
        return make()
    except own_errors as err:
        raise CheckpointError(f"checkpoint {where}: {err}") from None
    except (ValidationError, TypeError) as err:
        raise CheckpointError(f"checkpoint {where}: params/policy: invalid ({validation_reason(err)})") from None


def check_compatible(weights: dict[str, torch.Tensor], module: torch.nn.Module, directory: str | Path) -> None:
    """Refuse weights whose names or shapes differ from the module built from the metadata."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {wrong[0]} is {list(got[wrong[0]])}, expected {list(expected[wrong[0]])}")
        raise CheckpointError(f"checkpoint {directory}: weights do not fit the policy in its metadata ({detail})")


def _unwritable(value: Any, where: str = "") -> str:
    """Where in ``value`` the first entry JSON cannot hold is (``.key[2]``), for the error."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        inner = f"{where}[{key}]" if isinstance(value, (list, tuple)) else f"{where}.{key}"
        try:
            json.dumps(item, default=_jsonable)
        except TypeError:
            return _unwritable(item, inner)
    return where


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite number as None: JSON has no such numbers, and
    Python's ``NaN`` token made a checkpoint's JSON that jq and JavaScript refuse (a
    training history's score that was never measured reads as null, as in JSON.stringify)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- policies ------------------------------------------------------------------------------


def save_policy(directory: str | Path, module: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Save an :class:`moca.policy.LSTMPolicy` with what rebuilds it (params, config).
    A policy over another base rule, or CLSC-2's, is refused, naming its own saver: written
    as a plain policy, it loaded back without its rule and acted otherwise without a word."""
    from moca.policy import LSTMPolicy

    if type(module) is not LSTMPolicy:
        savers = {"MappedPolicy": "moca.regime_map.save_mapped_policy", "MPCBasePolicy": "moca.mpc_base.save_mpc_policy",
                  "LSTMPolicy2": "moca.meta2.save_policy2 (a CLSC-2 policy)"}
        name = type(module).__name__
        if name not in savers:  # (a subclass of a user's, or no policy: no saver of moca's rebuilds it)
            raise CheckpointError(f"module: a {name}; moca saves its own policies only (LSTMPolicy, MappedPolicy, "
                                  "MPCBasePolicy, LSTMPolicy2), each as the kind that loads back the same policy")
        raise CheckpointError(f"module: a {name}, not a plain CLSC-1 LSTMPolicy; save it with {savers[name]}"
                              + ("" if name == "LSTMPolicy2" else
                                 " (moca.regime_map.save_learned_policy takes every CLSC-1 kind)"))
    meta = merged({"kind": "lstm-policy", "model": "CLSC-1", "params": module.params.model_dump(mode="json"),
                   "policy": module.config.model_dump(mode="json")}, metadata)
    return save(directory, dict(module.state_dict()), meta)


def load_policy(directory: str | Path):
    """Read a policy checkpoint: returns ``(module, metadata)``; the module holds the weights.

    Every problem (missing, corrupted, not a policy, params or config that do not
    validate, weights of other shapes) is a :class:`CheckpointError` naming the checkpoint.
    """
    from pydantic import ValidationError

    from moca.policy import LSTMPolicy, PolicyConfig
    from moca.scenario import Params, validation_reason

    weights, meta = load(directory)
    where = resolve(directory)
    if meta.get("kind") != "lstm-policy" or meta.get("model", "CLSC-1") != "CLSC-1":
        raise refuse(where, meta, "CLSC-1", "lstm-policy")
    params, config = blocks(meta, where)
    try:
        module = LSTMPolicy(Params(**params), PolicyConfig(**config))
    except (ValidationError, TypeError) as err:
        raise CheckpointError(f"checkpoint {where}: invalid params/policy in {META} ({validation_reason(err)})") from None
    check_compatible(weights, module, where)
    module.load_state_dict(weights)
    return module, meta
