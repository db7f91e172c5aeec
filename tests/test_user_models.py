"""A model of the user's own (``package.module:Class``), planned, served and checked like a zoo model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import evaluate
from runtime import models
from runtime.cluster import LocalCluster
from runtime.graph import LayerGraph
from runtime.limits import Limits
from runtime.plan import Plan
from runtime.spec import load_cluster
from runtime.weights import WeightStore

MODEL = "user_models:StripNet"  # tests/user_models.py (pytest puts tests/ on the path)
TINY3 = Path(__file__).resolve().parent.parent / "configs" / "clusters" / "tiny3.yaml"


def test_a_users_model_is_named_by_its_import_path_and_bad_ones_say_why():
    assert models.input_shape(MODEL) == (3, 40, 36)
    graph = LayerGraph.from_model(models.skeleton(MODEL), models.input_shape(MODEL), MODEL)
    assert len(graph.units) == 11 and graph.units[0].in_shape == (3, 40, 36)
    assert graph.units[-1].name == "head.2" and graph.units[-1].out_shape[-1] == 5
    for name, reason in (
        ("user_models:Nope", "user_models has no ZooModel subclass Nope"),
        ("user_models:NotAModel", "user_models has no ZooModel subclass NotAModel"),
        ("user_models:NoShape", "needs input_shape = (C, H, W)"),
        ("no_such_package.models:Net", "cannot import no_such_package.models (ModuleNotFoundError"),
        ("vgg17", "or your own ZooModel subclass as package.module:Class"),
    ):
        with pytest.raises(models.ModelError, match=re.escape(reason)):
            models.input_shape(name)


def test_a_worker_runs_a_users_model_only_when_started_to():
    with pytest.raises(models.ModelError, match=f"started with --allow-model {MODEL}"):
        WeightStore(None, Limits()).prepare(MODEL, 0, models.input_shape(MODEL))
    with pytest.raises(models.ModelError, match="unknown model 'vgg17'"):
        WeightStore(None, Limits()).prepare("vgg17", 0, (3, 224, 224))
    store = WeightStore(None, Limits(), allowed_models=frozenset({MODEL}))
    assert store.prepare(MODEL, 0, models.input_shape(MODEL)).name == MODEL


def test_a_users_model_split_over_workers_computes_what_it_computes_whole():
    """The workers are separate processes: LocalCluster lets them import the model from where we did."""
    spec = load_cluster(TINY3)
    with LocalCluster(spec, model=MODEL, seed=3, emulate=False) as cluster:
        ctl = cluster.controller
        n = len(ctl.graph.units)
        devices = list(spec.devices)
        plan = Plan.build(
            spec.source,
            spec.sink,
            [
                (0, 4, dict.fromkeys(devices, 1.0)),
                (4, 8, {devices[1]: 2.0, devices[2]: 1.0}),
                (8, n, {spec.sink: 1.0}),
            ],
        )
        ctl.deploy(plan)
        x = torch.randn(1, *models.input_shape(MODEL), generator=torch.Generator().manual_seed(1))
        got = ctl.infer(x).output
    want = models.build(MODEL, seed=3)(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_planners_compare_on_a_users_model(tmp_path):
    out = tmp_path / "compare.json"
    argv = ["compare", "--cluster", str(TINY3), "--model", MODEL, "--backend", "sim", "--requests", "2"]
    assert (
        evaluate.main([*argv, "--agents", "optimal,deepslicing,local", "--cost", "flops", "--json", str(out)])
        == 0
    )
    agents = json.loads(out.read_text())["agents"]
    assert agents["optimal"]["latency_mean_s"] <= agents["local"]["latency_mean_s"]


def test_a_bad_model_is_a_usage_error_naming_the_reason(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["compare", "--cluster", str(TINY3), "--model", "user_models:NoShape"])
    assert "user_models:NoShape': its class needs input_shape" in capsys.readouterr().err
