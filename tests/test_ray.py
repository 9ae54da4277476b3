"""The Ray backend: a sweep and a meta-training run on a local Ray of 2 CPUs give the
numbers of the local runs. One Ray for the module, always shut down (bounded waits)."""

import json

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from typer.testing import CliRunner  # noqa: E402

from moca.cli import app  # noqa: E402
from moca.cluster import Backend  # noqa: E402
from moca.meta import MetaConfig, meta_train  # noqa: E402
from moca.policy import LSTMPolicy, PolicyConfig  # noqa: E402
from moca.sweep import make_plan, run_sweep  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    backend = Backend("ray", workers=2, address="auto")
    try:
        backend.start()
        yield backend
    finally:
        ray.shutdown()  # whatever happened above, no Ray process outlives the tests
    assert not ray.is_initialized()


def test_sweep_on_ray_gives_the_serial_numbers(local_ray):
    plan = make_plan("CLSC-1", "carbon_tax", "100,250", policies="oracle,threshold,mpc", scenarios=2,
                     threshold_budget=96)
    serial = run_sweep(plan, Backend("serial"))
    on_ray = run_sweep(plan, local_ray)
    assert on_ray["backend"]["kind"] == "ray" and on_ray["backend"]["cluster_cpus"] == 2.0
    for name, entry in serial["policies"].items():
        for key, value in entry.items():
            if key == "shadow_price_unit":
                continue
            np.testing.assert_allclose(np.asarray(on_ray["policies"][name][key], dtype=float),
                                       np.asarray(value, dtype=float), rtol=1e-9, err_msg=f"{name}.{key}")
    assert ray.is_initialized()  # a sweep on a Ray it did not start leaves it running


def test_clsc2_sweep_on_ray_gives_the_serial_numbers(local_ray):
    plan = make_plan("CLSC-2", "recycled_content_min", "0.2", base="T1", policies="oracle,threshold", scenarios=2,
                     threshold_budget=48)
    serial, on_ray = run_sweep(plan, Backend("serial")), run_sweep(plan, local_ray)
    assert on_ray["model"] == "CLSC-2" and on_ray["backend"]["kind"] == "ray"
    for name, entry in serial["policies"].items():
        for key in ("cost", "compliance_cost", "emissions", "recycled_share", "lost_sales", "violations"):
            np.testing.assert_allclose(on_ray["policies"][name][key], entry[key], rtol=1e-9, err_msg=f"{name}.{key}")
    assert on_ray["policies"]["oracle"]["shadow_price"] == pytest.approx(serial["policies"]["oracle"]["shadow_price"],
                                                                         rel=1e-9)


def test_cli_sweep_with_ray(local_ray, tmp_path):
    out = tmp_path / "sweep.json"
    result = CliRunner().invoke(app, ["sweep", "--field", "recovery_target", "--values", "0.5,0.9", "--policies",
                                      "oracle", "--scenarios", "2", "--ray", "auto", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["backend"]["kind"] == "ray" and data["policies"]["oracle"]["violations"] == [0, 0]


def _local_and_on_ray(train, config, build, backend) -> tuple[dict, list, list]:
    """Meta-train ``config`` locally and on ``backend`` (one torch thread, as the workers);
    check the weights agree to 1e-6 and return how far each moved from the initial weights
    (``build`` makes them) and both runs' step histories."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run with one thread; so does the reference
    try:
        local, local_history = train(config)
        distributed, history = train(config, backend=backend)
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    init = dict(build(config.params, config.policy).named_parameters())
    moved = {}
    for (name, a), (_, b) in zip(local.named_parameters(), distributed.named_parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=0, atol=1e-6, err_msg=name)
        moved[name] = float((a - init[name]).detach().abs().max())
    return moved, local_history["steps"], history["steps"]


@pytest.mark.parametrize("algorithm", ["fomaml", "reptile"])
def test_meta_training_on_ray_gives_the_local_weights(local_ray, algorithm):
    config = MetaConfig(algorithm=algorithm, meta_steps=2, tasks_per_step=2, support_size=1, query_size=1,
                        max_seconds=None, policy=PolicyConfig(hidden=8))
    moved, local_steps, steps = _local_and_on_ray(meta_train, config, LSTMPolicy, local_ray)
    assert [s["support_score"] for s in steps] == pytest.approx([s["support_score"] for s in local_steps], rel=1e-5)
    # Two Adam steps of 1e-3 moved the weights, so agreeing is not trivial.
    assert max(moved.values()) > 5e-4


def test_clsc2_meta_training_on_ray_gives_the_local_weights(local_ray):
    from moca.meta2 import MetaConfig2, meta_train2
    from moca.policy2 import LSTMPolicy2

    config = MetaConfig2(meta_steps=2, tasks_per_step=2, support_size=1, query_size=1, max_seconds=None,
                         validate_every=0, policy=PolicyConfig(hidden=8))
    moved, local_steps, steps = _local_and_on_ray(meta_train2, config, LSTMPolicy2, local_ray)
    for key in ("support_score", "query_score"):
        assert [s[key] for s in steps] == pytest.approx([s[key] for s in local_steps], rel=1e-5)
    # Both Adam groups moved (the base rule's at 30x the rate), so agreeing is not trivial.
    assert moved["rule_bias"] > 1e-2 and max(v for k, v in moved.items() if not k.startswith("rule_")) > 1e-3
