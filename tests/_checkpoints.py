"""A checkpoint's JSON written back with its digest renewed, as moca writes it: the tests of
what moca checks behind the digest (a field out of range, weights of other shapes) edit
the JSON and must reseal it, or the digest refuses it first (which its own test covers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moca import checkpoint


def write_meta(directory: str | Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` as ``directory``'s checkpoint.json with a matching digest."""
    meta = {**meta, checkpoint.META_DIGEST: checkpoint.metadata_digest(meta)}
    (Path(directory) / checkpoint.META).write_text(json.dumps(meta))
