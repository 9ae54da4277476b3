"""Which learning signal reaches a higher score sooner: the episode cost (BPTT through the
simulator and safety layer), DAgger-style imitation of the MPC, or both?

    .venv/bin/python benchmarks/bench_losses.py [--steps 20] [--regime T2] [--teacher mpc|oracle]

Starts every loss from the shipped meta-init (``default``), trains the same number of Adam
steps on the same training scenarios (seeds 0-7), scores on validation scenarios (seeds
900+) every few steps, and prints one JSON object (:func:`moca.policy.compare_losses`):
per loss the score curve over steps and wall seconds; ``winner`` has the highest mean score
over the curve (higher sooner), ``best_final`` the highest final score.
"""

from __future__ import annotations

import argparse
import json

import torch

from _args import positive_int, regime_spec
from moca import checkpoint
from moca.policy import compare_losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--regime", type=regime_spec, default="T2")
    parser.add_argument("--teacher", choices=("mpc", "oracle"), default="mpc")
    args = parser.parse_args()
    torch.set_num_threads(1)
    module, _ = checkpoint.load_policy("default")
    result = compare_losses(module.params, args.regime, module.config, steps=args.steps, teacher=args.teacher,
                            init=module.state_dict())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
