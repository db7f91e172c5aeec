"""A worker's control messages: CONFIG (peers, emulation, power) and DEPLOY (retire plans, cancel
attempts, deploy a new plan), and the build thread that builds a new plan's model.

A new plan is checked at once (everything that needs no model build: its device, input size and the
peers it sends to) and bound to its client; its model is built on the build thread (a build takes
seconds: the I/O thread keeps answering meanwhile; ``runtime/weights.py`` loads only the weights of the
units this device runs), and the plan goes live and is confirmed (DEPLOY_OK) once built. The compute an
abandoned attempt did here is reported with the DEPLOY's answer (PROGRESS, ``ev: compute``), so that its
request's energy includes it.
"""

from __future__ import annotations

import logging
import math
import queue
from collections.abc import Callable
from typing import Any

import torch

from runtime import models
from runtime.auth import Sender
from runtime.deployment import Deployment
from runtime.emulation import EnergyMeter
from runtime.graph import LayerGraph
from runtime.inbound import check_abandon, check_config
from runtime.limits import Limits
from runtime.transport import Header, Kind, Message
from runtime.weights import WeightStore
from runtime.worker_state import WorkerState

log = logging.getLogger("runtime.worker")


class WorkerControl:
    """CONFIG, DEPLOY and the build thread of one worker (see the module docstring); ``emit`` and
    ``error`` are the worker's ways to answer."""

    def __init__(
        self,
        device: str,
        boot: str,
        state: WorkerState,
        weights: WeightStore,
        limits: Limits,
        meter: EnergyMeter,
        emit: Callable[..., None],
        error: Callable[..., None],
    ):
        self.device, self.boot, self.state, self.weights = device, boot, state, weights
        self.limits, self.meter, self.emit, self.error = limits, meter, emit, error
        self.builds: queue.SimpleQueue = queue.SimpleQueue()  # deployments whose model is being built

    def on_config(self, msg: Message, sender: Sender) -> None:
        config = check_config(msg, self.device)
        self.state.configure(config, sender.owner)
        self.meter.power = config.power
        self.emit(msg.peer, Header(Kind.ACK, msg.header.rid, {"device": self.device, "boot": self.boot}))

    def on_deploy(self, msg: Message, sender: Sender) -> None:
        """Retire plans and cancel attempts at once; a new plan is checked here and built on the build
        thread."""
        meta = msg.header.meta
        retire, cancel = check_abandon(meta)
        dep = None if meta.get("deploy") is None else self._check_deployment(meta["deploy"])
        spent = self.state.accept_deploy(sender, retire, cancel, dep, self.builds.qsize())
        for (plan_id, rid), start, end in spent:  # before DEPLOY_OK: the controller has them when it acts
            meta = {"ev": "compute", "plan": plan_id, "from": self.device, "start": start, "end": end}
            self.emit(msg.peer, Header(Kind.PROGRESS, rid, meta))
        if dep is not None:
            self.builds.put((dep, msg.peer, msg.header.rid, sender.owner))
            return
        reply = {"plan": None, "device": self.device, "boot": self.boot}
        self.emit(msg.peer, Header(Kind.DEPLOY_OK, msg.header.rid, reply))

    def _check_deployment(self, meta: Any) -> Deployment:
        """Everything about a new deployment that needs no model build."""
        dep = Deployment.from_meta(meta)
        if dep.device != self.device:
            raise ValueError(f"deployment for {dep.device!r} sent to {self.device!r}")
        if math.prod(dep.input_shape) > self.limits.max_input_elements:
            raise ValueError(
                f"input shape {list(dep.input_shape)} exceeds {self.limits.max_input_elements} elements "
                "(--max-input-elements)"
            )
        peers = self.state.peer_ids()
        sends = [*dep.feed, *(s for t in dep.tasks for s in t.sends), *dep.relays]
        hops = {s.path[s.path.index(self.device) + 1] for s in sends if s.path[-1] != self.device}
        if unknown := hops - peers:
            raise ValueError(f"plan {dep.plan_id} sends to unknown device(s) {sorted(unknown)}")
        return dep

    def build_loop(self) -> None:
        """Build the models of new deployments, then make them live and confirm (DEPLOY_OK)."""
        torch.set_num_threads(1)
        while (job := self.builds.get()) is not None:
            dep, peer, rid, owner = job
            try:
                graph = self._build(dep)
            except (ValueError, models.ModelError) as exc:
                self.state.unbind(dep, owner)
                self.error(peer, rid, f"deploy: {exc}", "deploy", plan=dep.plan_id)
                continue
            except Exception as exc:  # a broken model must not take the build thread down
                log.exception("%s: building plan %d failed", self.device, dep.plan_id)
                self.error(peer, rid, f"deploy: internal error {exc!r}", "deploy", plan=dep.plan_id)
                continue
            if not self.state.install(dep, peer, owner, graph):
                continue  # retired (or reset) while it was built
            reply = {"plan": dep.plan_id, "device": self.device, "boot": self.boot}
            self.emit(peer, Header(Kind.DEPLOY_OK, rid, reply))

    def _build(self, dep: Deployment) -> LayerGraph:
        graph = self.weights.prepare(dep.model, dep.seed, dep.input_shape)
        if dep.bounds[-1] > len(graph.units):
            raise ValueError(f"plan units up to {dep.bounds[-1]} beyond the model's {len(graph.units)}")
        self.weights.prepare(dep.model, dep.seed, dep.input_shape, dep.units())
        return graph

    def stop(self) -> None:
        self.builds.put(None)
