"""Upper bounds on the counts and seeds a user gives moca (command line, library, service).

A typo such as ``--scenarios 100000000`` used to draw scenarios for minutes, with memory
growing and no progress bar yet, and a seed beyond 64 bits was an internal error in
torch; every bound here is far beyond any run moca or its README makes (20 test
scenarios, 3-8 adaptation steps, 1,500 threshold candidates). This module imports
only the standard library, so the command line can read it at start-up.
"""

import math
import numbers

#: Seeds and ids are 64-bit: torch.manual_seed and SQLite take no more (a larger id in a
#: service request is a 422, not an OverflowError).
LARGEST_SEED = LARGEST_ID = 2**63 - 1
#: Stable-Baselines3 seeds numpy's legacy generator, which takes 32 bits (beyond was an
#: error inside SB3 once PPO's training had started).
LARGEST_PPO_SEED = 2**32 - 1
#: Scenarios scored per regime or value: 10,000 is hours of hindsight LPs already.
MOST_SCENARIOS = 10_000
#: Gradient steps of one adaptation (moca adapt, evaluate, continual, sweep, serve, and
#: MetaConfig.inner_steps).
MOST_STEPS = 100
#: Threshold candidates of one re-tuning (moca's peer tunes 1,500).
MOST_CANDIDATES = 100_000
#: Local worker processes (or a local Ray's CPUs) of one run: each is a Python with torch
#: (~0.3 GB); --workers 100000 started a process per task and recorded 100000 as its workers.
MOST_WORKERS = 64

#: Scenario seed ranges, disjoint from the 1000+ test and 5000+ benchmark seeds: meta-training
#: draws from the first, an adaptation's support and validation from the other two, so they
#: also bound how many support or validation scenarios an adaptation can have (100 each).
META_SEEDS = range(0, 800)
SUPPORT_SEEDS = range(800, 900)
VALIDATION_SEEDS = range(900, 1000)


def is_whole(value: object) -> bool:
    """A count or a seed: an int or a numpy integer, not a bool (Python and pydantic take
    ``True`` as 1, which ran one step or one environment without a word)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """A finite real number (int, float or their numpy kinds), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
