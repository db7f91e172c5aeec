"""The MicroSplit environment and the analytic completion: API conformance, masks, invalid actions,
determinism, reward normalisation, failures, and what completed plans look like."""

from __future__ import annotations

import dataclasses
import itertools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import env  # noqa: F401  (registers disnet/MicroSplit-v0)
from env.actions import action_mask
from env.completion import complete
from env.config import EnvConfig, EnvConfigError, model_graph
from env.net_view import net_view
from env.network import NetworkState
from env.partition_env import MicroSplitEnv
from env.shapes import Shape, search_shape, structured_shapes
from env.simulator import reference_plan
from env.snapshot import link_key
from env.traces import constant
from runtime.connections import DEAD_AFTER_S
from runtime.plan import Plan
from runtime.spec import load_cluster

TINY = {
    "model": "tiny",
    "clusters": ["tiny3"],
    "requests_per_episode": 6,
    "gap_s": [0.0, 0.5],
    "max_stages": 4,
    "max_split": 3,
    "dynamics": [
        {
            "links": {"default": {"kind": "random_walk", "mean": 30, "sigma": 8, "lo": 1, "hi": 60}},
            "load": {"kind": "random_walk", "lo": 0.4, "hi": 1.0},
            "horizon_s": 60,
        }
    ],
}


def make(**overrides) -> MicroSplitEnv:
    return MicroSplitEnv(EnvConfig.parse({**TINY, **overrides}))


def static_world(down: dict | None = None, mbps: float | None = None) -> NetworkState:
    spec = load_cluster(_tiny3())
    traces = {link_key(ln.a, ln.b): constant(mbps or ln.mbps) for ln in spec.links}
    return NetworkState(spec, traces, downtime=down or {})


def _tiny3():
    from env.config import CLUSTER_DIR

    return CLUSTER_DIR / "tiny3.yaml"


def test_registered_env_passes_both_checkers():
    e = gym.make("disnet/MicroSplit-v0", config=TINY)
    gym_check_env(e.unwrapped)
    sb3_check_env(e.unwrapped)
    assert isinstance(e.action_space, gym.spaces.Discrete)
    assert e.observation_space.dtype == np.float32


def test_default_make_needs_no_arguments():
    e = gym.make("disnet/MicroSplit-v0")
    obs, info = e.reset(seed=0)
    assert e.observation_space.contains(obs)
    assert info["cluster"] == "tiny3"


def test_same_seed_same_episode_and_different_seed_different_world():
    def run(seed: int):
        e = make()
        obs, _ = e.reset(seed=seed)
        out = [obs]
        for i in range(6):
            valid = np.flatnonzero(e.action_masks())
            obs, reward, _, truncated, info = e.step(int(valid[i % len(valid)]))
            out += [obs, reward, info["latency_s"], info["plan"].plan, truncated]
        return out

    a, b, c = run(3), run(3), run(4)
    assert all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b, strict=True)
    )
    assert not np.array_equal(a[0], c[0])
    assert a[-1] is True  # requests_per_episode = 6 -> truncated on the 6th step


def test_action_zero_is_the_reference_and_rewards_are_latency_ratios():
    e = make()
    e.reset(seed=1)
    for action in (0, 1, 2):
        _, reward, _, _, info = e.step(action)
        assert reward == pytest.approx(-info["latency_s"] / info["reference_latency_s"])
        if action == 0:
            assert reward == pytest.approx(-1.0)
            assert info["plan"].plan.stages[0].assignments[0].share > 0


def test_energy_objective_rewards_energy_ratio():
    e = make(objective={"kind": "energy"})
    e.reset(seed=2)
    _, reward, _, _, info = e.step(1)
    assert reward == pytest.approx(-info["energy_j"] / info["reference_energy_j"])


def test_masks_follow_availability_and_padding():
    shapes = [[[0, 14], [1]], [[0, 9, 14], [2, 1]], [[0, 9, 14], [3, 1]]]
    e = make(shapes=shapes, n_actions=6)
    assert e.action_space.n == 6
    e.reset(seed=0, options={"world": static_world()})
    assert e.action_masks().tolist() == [True, True, True, False, False, False]
    e.reset(seed=0, options={"world": static_world(down={"d1": [(0.0, 1e6)]})})
    assert e.action_masks().tolist() == [True, True, False, False, False, False]


def test_the_single_device_action_stays_valid_with_no_usable_device():
    """One mask rule (env/actions.py) for the env and the policy planner: action 0 is always offered."""
    shapes = [[[0, 14], [1]], [[0, 9, 14], [2, 1]]]
    e = make(shapes=shapes, n_actions=4)
    everyone = {d: [(0.0, 1e6)] for d in ("d0", "d1", "d2")}
    e.reset(seed=0, options={"world": static_world(down=everyone)})
    assert e.sim.view.n_usable == 0
    assert e.action_masks().tolist() == [True, False, False, False]
    assert action_mask(e.graph, e.sim.view, e.shapes, 4).tolist() == e.action_masks().tolist()
    assert e.plan_for(0)[1] is False and e.plan_for(1)[1] is True


def test_unmasked_invalid_actions_run_safely_and_are_flagged():
    shapes = [[[0, 14], [1]], [[0, 9, 14], [3, 1]]]
    e = make(shapes=shapes, n_actions=4)
    e.reset(seed=0, options={"world": static_world(down={"d1": [(0.0, 1e6)]})})
    _, reward, _, _, info = e.step(1)  # needs 3 devices, only 2 are up: clamped
    plan = info["plan"].plan
    assert isinstance(plan, Plan) and Plan.from_json(plan.to_json()) == plan
    assert info["invalid_action"] is True and np.isfinite(reward)
    assert "d1" not in {d for st in plan.stages for d in st.devices}
    assert len(plan.stages[0].assignments) <= 2
    _, reward, _, _, info = e.step(3)  # padding: runs action 0
    assert info["invalid_action"] is True and reward == pytest.approx(-1.0)
    _, _, _, _, info = e.step(0)
    assert info["invalid_action"] is False


def test_failure_during_a_request_is_retried_on_the_reference():
    """A helper fails halfway through the request: it is restarted when the failure is found, on the
    reference of that moment, and pays for the half it ran, the wait, and the retry."""
    shapes = [[[0, 14], [1]], [[0, 14], [3]]]
    e = make(shapes=shapes, start_s=10.0)
    e.reset(seed=0, options={"world": static_world()})
    plan, _ = e.plan_for(1)
    latency = e.sim.cost_model.predict(plan, e.sim.world, 10.0).latency_s
    helper = sorted(plan.devices - {plan.source, plan.sink})
    assert helper, "the 3-way plan uses a device that is neither source nor sink"
    world = static_world(down={helper[0]: [(10.0 + latency / 2, 10.0 + 5.0)]})
    e.reset(seed=0, options={"world": world})
    _, _, _, _, info = e.step(1)
    assert info["failed"] is True
    restart = 10.0 + latency / 2 + DEAD_AFTER_S
    retry = e.sim.cost_model.cost(
        reference_plan(e.sim.graph, net_view(world.snapshot(restart))).plan, world, restart
    )
    assert info["latency_s"] == pytest.approx(latency / 2 + DEAD_AFTER_S + retry.latency_s)


def test_time_walks_along_the_trace():
    e = make(gap_s=[1.0, 1.0], start_s=5.0)
    e.reset(seed=0)
    _, _, _, _, info = e.step(0)
    assert info["time_s"] == 5.0
    _, _, _, _, info2 = e.step(0)
    assert info2["time_s"] == pytest.approx(5.0 + info["latency_s"] + 1.0)


def test_observation_encodes_the_snapshot():
    e = make()
    obs, _ = e.reset(seed=0, options={"world": static_world(mbps=63.0, down={"d1": [(0.0, 1e6)]})})
    f = e.observer.DEVICE_FEATURES
    dev = obs[: 3 * f].reshape(3, f)
    assert dev[:, 0].tolist() == [1, 1, 1]  # present
    assert dev[:, 1].tolist() == [1, 0, 1]  # d1 is down
    assert dev[:, 4].tolist() == [1, 0, 0] and dev[:, 5].tolist() == [0, 0, 1]  # source d0, sink d2
    # every link at 63 Mbit/s: its windowed mean and history map to exactly 1.0
    flags = e.observer.slots(e.sim.world.spec).link_values
    assert np.allclose(obs[flags], 1.0)
    assert obs[e.max_devices * f :][obs[e.max_devices * f :] > 0].size >= 3 * (2 + e.config.history)


def test_config_errors_name_the_field():
    with pytest.raises(EnvConfigError, match="my.yaml: max_split"):
        EnvConfig.parse({"max_split": 0}, origin="my.yaml")
    with pytest.raises(EnvConfigError, match="my.yaml: dynamics.0"):
        EnvConfig.parse({"dynamics": [{"load": {"kind": "bogus"}}]}, origin="my.yaml")
    with pytest.raises(EnvConfigError, match="shapes"):
        make(shapes=[[[0, 5, 14], [1, 1]]])  # 5 is not a cut point of the tiny model
    with pytest.raises(EnvConfigError, match="my.yaml: model: Value error, unknown model 'vgg17'"):
        EnvConfig.parse({"model": "vgg17"}, origin="my.yaml")
    with pytest.raises(EnvConfigError, match="my.yaml: clusters: .*nosuch.yaml: cannot read"):
        EnvConfig.parse({"clusters": ["nosuch"]}, origin="my.yaml")  # before training, not in a worker


# ---- completion ------------------------------------------------------------------------------------


def test_completion_gives_valid_plans_on_usable_devices_only():
    graph = model_graph("tiny")
    world = static_world(down={"d1": [(0.0, 1e6)]})
    view = net_view(world.snapshot(5.0))
    for shape in structured_shapes(graph, 6, 3):
        plan = complete(graph, view, shape).validate(graph, world.spec.device_ids)
        assert [(s.start, s.end) for s in plan.stages] == list(itertools.pairwise(shape.bounds))
        for stage, k in zip(plan.stages, shape.factors, strict=True):
            assert 1 <= len(stage.assignments) <= min(k, 2, graph.extent(stage.end))
            assert "d1" not in stage.devices
            assert sum(a.share for a in stage.assignments) == graph.extent(stage.end)


def test_completion_prefers_fast_devices_and_respects_memory():
    graph = model_graph("tiny")
    spec = load_cluster(_tiny3())
    view = net_view(NetworkState.static(spec).snapshot(1.0))
    plan = complete(graph, view, Shape((0, len(graph.units)), (1,)))
    assert plan.stages[0].devices == ("d2",)  # 8 GFLOP/s, also the sink
    fast = {link_key(ln.a, ln.b): constant(1e5) for ln in spec.links}  # transfers ~free: speed decides
    slow_d1 = NetworkState(spec, fast, speed={"d1": constant(0.01)})
    two = complete(graph, net_view(slow_d1.snapshot(1.0)), Shape((0, 3, len(graph.units)), (2, 1)))
    shares = {a.device: a.share for a in two.stages[0].assignments}
    assert set(shares) == {"d0", "d2"} and shares["d2"] > 2 * shares["d0"]  # d2 is 4x faster than d0
    near = {link_key(ln.a, ln.b): constant(1.0) for ln in spec.links}  # slow links: stay on the source
    plan = complete(
        graph, net_view(NetworkState(spec, near).snapshot(1.0)), Shape((0, 3, len(graph.units)), (2, 1))
    )
    assert plan.stages[0].devices[0] == "d0" and plan.stages[0].assignments[0].share > 16
    small = dataclasses.replace(
        spec, devices={**spec.devices, "d2": dataclasses.replace(spec.devices["d2"], memory_mb=1e-4)}
    )
    plan = complete(
        graph, net_view(NetworkState.static(small).snapshot(1.0)), Shape((0, len(graph.units)), (1,))
    )
    assert plan.stages[0].devices != ("d2",)


def test_search_finds_a_shape_no_worse_than_its_starts():
    e = make()
    e.reset(seed=5)
    starts = structured_shapes(e.graph, 4, 3)

    def score(shape):
        return e.sim.cost_model.latency(complete(e.graph, e.sim.view, shape), e.sim.snapshot, e.sim.time)

    best, cost = search_shape(e.graph, score, starts, 4, 3)
    assert cost <= min(score(s) for s in starts)
    assert best.fits(e.graph)


def test_live_backend_runs_requests_on_a_local_cluster():
    """A few requests of the tiny model on three worker processes: outputs equal the unsplit model's,
    rewards and measurements are finite and positive."""
    e = make(requests_per_episode=3, gap_s=[0.0, 0.05])
    live = MicroSplitEnv(e.config, backend="live", seed=0)
    try:
        live.reset(seed=0)
        for action in (0, 1, 2, 0):
            _, reward, _, truncated, info = live.step(action)
            assert info["outputs_match"] is True
            assert np.isfinite(reward) and info["latency_s"] > 0 and info["energy_j"] > 0
            if truncated:
                live.reset()
    finally:
        live.close()
