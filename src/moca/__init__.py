"""moca: Meta-Optimized Continual Adaptation for circular manufacturing supply chains.

The modules, read top to bottom: ``regime`` (rules in force), ``scenario`` (parameters
and seeded draws of both models), ``sim`` (CLSC-1's batched differentiable simulator),
``clsc2`` and ``sim2`` (CLSC-2 declared as data, and its simulator), ``world`` and
``projection`` (rows as data, the generic safety layer), ``safety`` (CLSC-1's projection
onto the hard constraints), ``oracle`` (hindsight LP), ``baselines`` (threshold rule,
rolling-horizon MPC), ``env`` and ``env2`` (Gymnasium), ``policy`` (LSTM policy),
``meta`` (MAML / FOMAML / Reptile), ``continual`` (EWC, GEM-projected updates),
``experiment`` (the seed experiment and its metrics) and ``cli``.

``import moca`` registers both Gymnasium environments, ``moca/CircularSupplyChain-v0``
(CLSC-1) and ``moca/CircularSupplyChain2-v0`` (CLSC-2), for ``gymnasium.make``, without
importing Gymnasium itself (it takes a large share of a second): if Gymnasium is loaded
already they are registered now, otherwise the moment it is imported.
"""

import sys

__version__ = "0.1.0"

#: Gymnasium ids and entry points of moca's environments.
GYM_ENVS: dict[str, str] = {
    "moca/CircularSupplyChain-v0": "moca.env:CircularSupplyChainEnv",
    "moca/CircularSupplyChain2-v0": "moca.env2:CircularSupplyChain2Env",
}


def register_envs() -> None:
    """Register :data:`GYM_ENVS` with Gymnasium (idempotent; imports Gymnasium)."""
    import gymnasium

    for env_id, entry_point in GYM_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)


class _RegisterWhenGymnasiumLoads:
    """A one-shot import hook: once ``gymnasium`` has been executed, register moca's envs.

    Hand-written because Gymnasium (1.x) reads no plugin entry points at import, and
    importing it here would slow every ``import moca`` (the CLI's start) for users who
    never make an environment.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "gymnasium":
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module, _run=run):
                _run(module)
                register_envs()

            spec.loader.exec_module = exec_module
        return spec


if "gymnasium" in sys.modules:
    register_envs()
else:
    sys.meta_path.insert(0, _RegisterWhenGymnasiumLoads())
