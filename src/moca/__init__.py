"""moca: Meta-Optimized Continual Adaptation for circular manufacturing supply chains.

The modules, read top to bottom: ``regime`` (rules in force), ``scenario`` (CLSC-1
parameters and seeded draws), ``sim`` (batched differentiable simulator), ``safety``
(projection onto the hard constraints), ``oracle`` (hindsight LP), ``baselines``
(threshold rule, rolling-horizon MPC), ``env`` (Gymnasium), ``policy`` (LSTM policy),
``meta`` (MAML / FOMAML / Reptile), ``continual`` (EWC, GEM-projected updates),
``experiment`` (the seed experiment and its metrics) and ``cli``.
"""

__version__ = "0.1.0"
