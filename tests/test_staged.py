"""The stage-by-stage policy: exact masks, the env's requests, the numpy actor, device-order equivariance,
any cluster size, and clear errors for a policy that does not fit."""

from __future__ import annotations

import copy
import itertools
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from stable_baselines3.common.vec_env import DummyVecEnv

from agents import PlannerError, make_planner
from agents.robust import RobustPlanner
from agents.staged_policy import StagedMeta, StagedPlanner, load_staged, save_staged
from env.completion import complete
from env.config import EnvConfig, model_graph
from env.cost_model import Objective
from env.meshes import generate_mesh
from env.net_view import net_view
from env.network import NetworkState
from env.partition_env import MicroSplitEnv
from env.shapes import Shape
from env.staged_env import StagedSplitEnv, observe
from runtime.spec import parse_cluster
from training.config import StagedConfig
from training.staged import _meta, behaviour_cloning, make_model, validate
from training.staged_labels import label_shape, label_worker, labelling_planner, random_state

ENV = {
    "model": "tiny",
    "clusters": [],
    "meshes": {"devices": [3, 8], "count": 4, "seed": 0},
    "random_endpoints": True,
    "max_devices": 8,
    "max_split": 4,
    "max_stages": 3,
    "requests_per_episode": 4,
    "cost": "flops",  # labels that do not depend on this host's measured speed (the profile's scale)
    "dynamics": [{"links": {"default": {"kind": "random_walk", "mean": 30, "sigma": 6, "lo": 1, "hi": 80}}}],
}


@pytest.fixture(scope="module")
def env() -> StagedSplitEnv:
    return StagedSplitEnv(EnvConfig.parse(ENV))


@pytest.fixture(scope="module")
def policy(env, tmp_path_factory) -> tuple:
    """A randomly initialised staged policy file (the architecture is what these tests are about)."""
    cfg = StagedConfig.model_validate({"name": "t", "env": ENV})
    model = make_model(cfg, DummyVecEnv([lambda: StagedSplitEnv(cfg.env)]), env.max_devices)
    meta = StagedMeta(
        model="tiny",
        n_units=len(env.graph.units),
        cut_points=list(env.graph.cut_points),
        max_factor=env.actions.max_factor,
        max_stages=env.actions.max_stages,
        activation="tanh",
        objective={"kind": "latency", "energy_weight": 0.0},
    )
    return save_staged(tmp_path_factory.mktemp("staged") / "policy.zip", model.policy, meta), model, cfg


def test_masks_are_exact(env):
    """Every unmasked action is a stage that fits; after max_stages - 1 stages only the model's end is
    allowed; every rollout of valid actions is a shape of the graph within the limits."""
    rng = np.random.default_rng(0)
    n_units = len(env.graph.units)
    env.reset(seed=1)
    for _ in range(60):
        usable = env.sim.view.n_usable
        mask = env.action_masks()
        start, stages = env.partial.start, len(env.partial.factors)
        for a in range(env.actions.n):
            cut, k = env.actions.decode(a)
            fits = cut > start and k <= max(1, min(usable, env.graph.extent(cut)))
            if stages + 1 == env.actions.max_stages:
                fits = fits and cut == n_units
            assert mask[a] == fits, (a, cut, k, start, stages)
        _, _, done, _, info = env.step(int(rng.choice(np.flatnonzero(mask))))
        if done:
            spans = info["plan"].stages
            bounds = [spans[0][0], *(end for _, end in spans)]
            assert bounds[0] == 0 and bounds[-1] == n_units and set(bounds) <= set(env.graph.cut_points)
            assert len(spans) <= env.actions.max_stages and not info["invalid_action"]
            env.reset()


def test_request_is_the_microsplit_request_of_its_shape(env):
    """Closing stages (3, x2) then (end, x1) serves the completion of that shape, with MicroSplitEnv's reward."""
    n_units = len(env.graph.units)
    shape = Shape((0, 3, n_units), (2, 1))
    env.reset(seed=5)
    snapshot, t = env.sim.snapshot, env.sim.time
    expected = complete(env.graph, net_view(snapshot), shape)
    reward = None
    for _, end, k in shape.stages:
        _, reward, done, _, info = env.step(env.actions.encode(end, k))
    assert done and info["plan"].plan == expected
    twin = MicroSplitEnv(EnvConfig.parse({**ENV, "shapes": [shape.to_list()]}))
    twin.reset(options={"world": env.sim.world, "time": t})
    _, twin_reward, *_ = twin.step(1)
    assert reward == pytest.approx(twin_reward)


def test_numpy_actor_matches_the_torch_policy(env, policy):
    path, model, _ = policy
    planner = StagedPlanner(path)
    env.reset(seed=2)
    for _ in range(3):
        obs = env.observation()
        with torch.no_grad():
            features = model.policy.extract_features(torch.as_tensor(obs[None]))
            expected = model.policy.action_net(model.policy.mlp_extractor(features)[0])[0].numpy()
        tokens, context = observe(env.graph, env.sim.snapshot, env.sim.view, env.partial, env.actions)
        np.testing.assert_allclose(planner.net.logits(tokens, context), expected, rtol=1e-4, atol=1e-5)
        env.step(int(np.flatnonzero(env.action_masks())[0]))


def test_env_and_planner_complete_on_the_cost_models_profile(policy, tmp_path):
    """On a profile far from the FLOPs (the first unit 200x slower per FLOP), the env serves and a policy
        trained on it plans the completion on the profile's work, as the optimisers do: a shape means in
        planning what it meant in training, and a label's shape completes to the plan its labeller priced. A
        policy file that says it was trained on FLOPs (as files without the field were) keeps FLOPs; training
    writes what its env used."""
    path, model, cfg = policy
    on_profile = save_staged(
        tmp_path / "profile.zip", model.policy, replace(load_staged(path)[1], completion="profile")
    )
    graph = model_graph("tiny")
    seconds = [u.flops / 1e9 * (200.0 if i == 0 else 1.0) for i, u in enumerate(graph.units)]
    record = {"format": "disnet-profile/1", "model": "tiny", "input_shape": list(graph.input_shape),
              "units": [u.name for u in graph.units], "reference_gflops": 1.0, "unit_seconds": seconds,
              "host": "elsewhere"}  # fmt: skip
    (tmp_path / "tiny.json").write_text(json.dumps(record))
    profiled = StagedSplitEnv(
        EnvConfig.parse({**ENV, "cost": "profile", "profile": str(tmp_path / "tiny.json")})
    )
    profile = profiled.sim.profile
    assert (
        _meta(cfg, profiled).completion == "profile"
        and _meta(cfg, StagedSplitEnv(cfg.env)).completion == "flops"
    )
    planner = StagedPlanner(on_profile, profiled.sim.cost_model)
    on_flops = StagedPlanner(path, profiled.sim.cost_model)
    differ = 0
    for seed in range(6):
        profiled.reset(seed=seed)
        snapshot, view = profiled.sim.snapshot, profiled.sim.view
        plan = planner.decide(snapshot, profiled.graph, Objective()).plan
        shape = planner.shapes(snapshot, profiled.graph, view)[0]
        assert plan == complete(profiled.graph, view, shape, profile)
        flops_shape = on_flops.shapes(snapshot, profiled.graph, view)[0]
        assert on_flops.decide(snapshot, profiled.graph, Objective()).plan == complete(
            graph, view, flops_shape
        )
        for _, end, k in shape.stages:
            *_, info = profiled.step(profiled.actions.encode(end, k))
        assert info["plan"].plan == plan
        fixed = Shape((0, 1, len(graph.units)), (3, 1))
        differ += complete(graph, view, fixed, profile) != complete(graph, view, fixed)
    assert differ  # the profile changes the completion here, so the checks above can tell the two apart


def _mesh(n: int, seed: int) -> dict:
    """A family mesh with distinct device speeds and link rates (no ties for the completion to break)."""
    doc = generate_mesh(n, seed)
    for i, dev in enumerate(doc["devices"].values()):
        dev["compute_rate"] = 1 + i * 0.7
    for i, link in enumerate(doc["links"]):
        link[2] = 10 + 2.3 * i
    return doc


def _snapshot(doc: dict):
    spec = parse_cluster(doc, origin=doc["name"])
    return NetworkState.static(spec).snapshot(10.0)


def test_plan_does_not_depend_on_device_order_or_names(policy):
    """Reordering and renaming the devices of the cluster file gives the same plan, renamed."""
    path, *_ = policy
    planner = StagedPlanner(path)
    graph = model_graph("tiny")
    for seed in range(4):
        doc = _mesh(9, seed)
        perm = np.random.default_rng(seed).permutation(len(doc["devices"]))
        names = list(doc["devices"])
        rename = {names[i]: f"dev-{j}" for j, i in enumerate(perm)}
        moved = copy.deepcopy(doc)
        moved["devices"] = {rename[d]: doc["devices"][d] for d in reversed(names)}
        moved["links"] = [[rename[a], rename[b], mbps] for a, b, mbps in reversed(doc["links"])]
        moved["source"], moved["sink"] = rename[doc["source"]], rename[doc["sink"]]
        plan = planner.plan(_snapshot(doc), graph, Objective())
        other = planner.plan(_snapshot(moved), graph, Objective())
        assert [(s.start, s.end) for s in plan.stages] == [(s.start, s.end) for s in other.stages]
        for a, b in zip(plan.stages, other.stages, strict=True):
            assert [(rename[x.device], x.share) for x in a.assignments] == [
                (x.device, x.share) for x in b.assignments
            ]


@pytest.mark.parametrize("devices", [2, 12, 40])
def test_any_cluster_size_plans_without_fallback(policy, devices):
    path, *_ = policy
    graph = model_graph("tiny")
    planner = StagedPlanner(path)
    snapshot = _snapshot(generate_mesh(devices, 7))
    decision = planner.decide(snapshot, graph, Objective())
    assert decision.fallback is None
    decision.plan.validate(graph, snapshot.spec.device_ids)


def test_policy_for_another_model_is_an_error(policy):
    path, *_ = policy
    vgg = model_graph("vgg16_bn")
    with pytest.raises(PlannerError, match="trained for tiny, not vgg16_bn"):
        make_planner(f"ppo:{path}", graph=vgg, spec=parse_cluster(generate_mesh(4, 1)))
    with pytest.raises(PlannerError, match="trained for tiny"):
        StagedPlanner(path).decide(_snapshot(generate_mesh(4, 1)), vgg, Objective())
    assert make_planner(f"ppo-top3:{path}").top_k == 3
    assert (make_planner(f"ppo-top3-polish50:{path}").polish, make_planner(f"ppo:{path}").polish) == (50, 0)
    with pytest.raises(PlannerError, match="polish"):
        make_planner(f"ppo:{path}", polish=-1)


def test_a_policy_file_holding_another_models_weights_is_an_error(tmp_path):
    pretrained = Path(__file__).resolve().parents[1] / "agents" / "pretrained"
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(mixed, "w") as out:  # VGG-16's description, ResNet-18's weights
        out.writestr("disnet.json", zipfile.ZipFile(pretrained / "vgg16_any.zip").read("disnet.json"))
        out.writestr("policy.pth", zipfile.ZipFile(pretrained / "resnet18_any.zip").read("policy.pth"))
    vgg, spec = model_graph("vgg16_bn"), parse_cluster(generate_mesh(5, 1))
    with pytest.raises(PlannerError, match="mixed.zip: its weights do not fit vgg16_bn"):
        make_planner(f"ppo-top3-polish:{mixed}", graph=vgg, spec=spec)


def test_a_policy_plan_that_overfills_a_devices_memory_is_an_error_never_an_impossible_plan():
    doc, vgg = generate_mesh(8, 9008), model_graph("vgg16_bn")
    planner = make_planner(
        f"ppo-top3-polish:{Path(__file__).resolve().parents[1]}/agents/pretrained/vgg16_any.zip"
    )
    for device in doc["devices"].values():  # VGG-16's 553 MB of weights on 450 MB devices
        device["memory_mb"] = 450
    with pytest.raises(PlannerError, match="policy vgg16_any.zip cannot serve this cluster: its rule puts"):
        planner.decide(_snapshot(doc), vgg, Objective())
    for device in doc["devices"].values():
        device["memory_mb"] = 600
    assert planner.decide(_snapshot(doc), vgg, Objective()).fallback is None


def test_policy_file_with_an_unknown_completion_is_an_error(policy, tmp_path):
    path, model, _ = policy
    odd = save_staged(tmp_path / "odd.zip", model.policy, replace(load_staged(path)[1], completion="guess"))
    with pytest.raises(PlannerError, match="completion 'guess', expected one of"):
        make_planner(f"ppo:{odd}")


def test_polish_improves_on_the_policys_plan_on_the_devices_it_chose(policy):
    """With a polish the planner returns a plan the cost model scores no worse than the policy's best of
    three, on no device those plans leave out, the same plan for the same snapshot; and on some mesh a
    better one (the random policy's completions leave room)."""
    path, *_ = policy
    graph, objective, gains = model_graph("tiny"), Objective(), []
    plain, polished = StagedPlanner(path, top_k=3), StagedPlanner(path, top_k=3, polish=60)
    for devices, seed in itertools.product((3, 10), range(5)):
        snapshot = _snapshot(generate_mesh(devices, seed))
        mine, better = plain.plan(snapshot, graph, objective), polished.plan(snapshot, graph, objective)
        better.validate(graph, snapshot.available)
        skeleton = polished.cost_model(graph, snapshot.spec).skeleton
        chosen = set().union(
            *(skeleton(complete(graph, net_view(snapshot), s)).devices for s in plain.shapes(snapshot, graph))
        )
        assert set(skeleton(better).devices) <= chosen, "no device the policy's plans leave out"
        assert polished.plan(snapshot, graph, objective) == better, "equal snapshots give equal plans"
        gains.append(
            plain.score(mine, snapshot, graph, objective) - polished.score(better, snapshot, graph, objective)
        )
    assert min(gains) >= 0.0, "the polish never returns a plan the cost model scores worse"
    assert max(gains) > 0.0, "and it finds something the completion missed"


def test_labels_replay_the_optimiser_and_cloning_learns_them(policy):
    """Optimiser labels replay as valid sub-steps ending in a served request; cloning fits them."""
    _, model, cfg = policy
    samples = label_worker(cfg.env.model_dump(), [1, 2, 3, 4], evaluations=40)
    assert samples and all(len(s["obs"]) == len(s["actions"]) == len(s["masks"]) for s in samples)
    assert all(m[a] for s in samples for m, a in zip(s["masks"], s["actions"], strict=True))
    assert all(s["reward"] < 0 and s["latency_s"] > 0 for s in samples)
    bc = cfg.bc.model_copy(update={"epochs": 60, "batch_size": 16})
    assert behaviour_cloning(copy.deepcopy(model), samples, bc, seed=0)["train_action_accuracy"] > 0.9


def test_validation_reads_the_policy_against_the_optimisers_own_plan_and_against_its_label(policy):
    """A policy that reproduces every label exactly is 1.0x its labels, and exactly what the completion
    loses against the optimiser's own plans (its devices chosen by its search) over the optimiser."""
    _, _, cfg = policy
    env = StagedSplitEnv(cfg.env)
    samples = label_worker(cfg.env.model_dump(), [1, 2, 3, 4], evaluations=40)

    class Cloner:  # plans each validation state's label (states come in the samples' order)
        labels = iter(samples)

        def shapes(self, snapshot, graph, view):
            cuts = [env.actions.decode(a) for a in next(self.labels)["actions"]]
            return [Shape((0, *(cut for cut, _ in cuts)), tuple(k for _, k in cuts))]

    report = validate(env, Cloner(), samples)
    assert report["mean_ratio_to_label"] == pytest.approx(1.0)
    lost = np.mean([s["latency_s"] / s["optimiser_latency_s"] for s in samples])
    assert report["mean_ratio_to_optimiser"] == pytest.approx(lost)


def test_the_robust_labeller_labels_the_robust_optimisers_plans(policy):
    """With ``bc.labeller: optimal`` every label is the robust optimiser's plan's shape on its state,
    replayed as sub-steps; a labeller the config does not know is refused by name."""
    _, _, cfg = policy
    env_cfg = cfg.env.model_dump()
    samples = label_worker(env_cfg, [1, 2, 3], evaluations=40, labeller="optimal")
    assert samples
    env = StagedSplitEnv(EnvConfig.model_validate(env_cfg))
    for sample in samples:
        random_state(env, sample["seed"])
        planner = labelling_planner("optimal", env.sim.cost_model, 40)
        assert isinstance(planner, RobustPlanner)
        shape = label_shape(Shape.of_plan(planner.plan(env.sim.snapshot, env.graph, env.sim.objective)), env)
        assert sample["actions"] == [env.actions.encode(end, k) for _, end, k in shape.stages]
    with pytest.raises(ValidationError, match="labeller"):
        StagedConfig.model_validate({"name": "t", "env": ENV, "bc": {"labeller": "oracle"}})


def test_training_meshes_never_use_evaluation_seeds():
    from env.config import EnvConfigError
    from env.meshes import EVAL_SEED_BASE

    with pytest.raises(EnvConfigError, match=f"below {EVAL_SEED_BASE}"):
        EnvConfig.parse({**ENV, "meshes": {"count": 10, "seed": EVAL_SEED_BASE - 5}})
    with pytest.raises(EnvConfigError, match="clusters: list at least one cluster, or set meshes"):
        EnvConfig.parse({**ENV, "meshes": None})


def test_bad_staged_config_names_file_and_field(tmp_path, capsys):
    import yaml

    import train

    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "kind": "staged", "env": ENV, "ppo": {"n_envs": 0}}))
    assert train.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml: ppo.n_envs" in err and "Traceback" not in err


SHIPPED = {  # every zoo model has a shipped policy for any cluster
    "vgg16_bn": "vgg16_any.zip",
    "resnet18": "resnet18_any.zip",
    "mobilenet_v2": "mobilenet_v2_any.zip",
    "yolov2_tiny": "yolov2_tiny_any.zip",
}


@pytest.mark.parametrize("model", sorted(SHIPPED))
def test_every_zoo_model_has_a_shipped_policy_that_plans_an_unseen_mesh(model):
    """The shipped policy plans its model on a mesh of an evaluation seed, without a fallback; asked to
    plan another model, it is a clear error."""
    from env.meshes import EVAL_SEED_BASE

    path = Path(__file__).resolve().parents[1] / "agents" / "pretrained" / SHIPPED[model]
    graph, doc = model_graph(model), generate_mesh(12, EVAL_SEED_BASE + 101)
    spec = parse_cluster(doc, origin=doc["name"])
    decision = make_planner(f"ppo:{path}", graph=graph, spec=spec).decide(_snapshot(doc), graph, Objective())
    assert decision.fallback is None
    decision.plan.validate(graph, spec.device_ids)
    other = "resnet18" if model != "resnet18" else "vgg16_bn"
    with pytest.raises(PlannerError, match=f"trained for {model}"):
        make_planner(f"ppo:{path}", graph=model_graph(other), spec=spec)
