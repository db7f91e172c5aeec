"""The plans a controller has deployed on its workers, and the plan in force of each lane.

Deploying a plan sends each of its devices its part (``runtime/deployment.py``), routed over the devices
that are up, and waits until every part is confirmed; a refusal or a device found down meanwhile retires
the plan again. A plan stays deployed while it is a lane's plan in force or an awaited request runs on
it, and is retired on its workers once neither holds; a single attempt is cancelled on its plan's
workers without retiring the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from runtime.attempts import Attempts
from runtime.connections import WorkerConnections
from runtime.deployment import Deployment, deployments
from runtime.graph import LayerGraph
from runtime.layout import layout
from runtime.plan import Plan, PlanError
from runtime.results import ControllerError
from runtime.spec import ClusterSpec, SpecError
from runtime.transport import Header, Kind, Message

# wait up to ``timeout_s`` for messages, each offered first to ``intercept`` (True: consumed)
Pump = Callable[[float, Callable[[str, Message], bool]], None]


@dataclass
class DeployedPlan:
    plan_id: int
    plan: Plan
    parts: dict[str, Deployment]
    radio_bytes: int = 0  # bytes a request sends over radios, each hop of a route: what ``progress`` counts


class DeployFailed(Exception):
    """A device went down while a plan was being deployed."""


class Unroutable(PlanError):
    """A plan's transfers cannot be routed over the devices that are up (a relay on every path between
    two of its devices is down)."""


class DeployedPlans:
    """Every plan deployed, by id (``by_id``), and each lane's plan in force (``current``); see the module
    docstring. ``pump`` is the controller's message loop, which confirmations arrive through."""

    def __init__(
        self,
        spec: ClusterSpec,
        graph: LayerGraph,
        model: str,
        seed: int,
        workers: WorkerConnections,
        attempts: Attempts,
        pump: Pump,
    ):
        self.spec, self.graph, self.model, self.seed = spec, graph, model, seed
        self.workers, self.attempts, self.pump = workers, attempts, pump
        self.by_id: dict[int, DeployedPlan] = {}
        self.current: dict[str, int] = {}  # lane -> id of its plan in force
        self._live_specs: dict[frozenset[str], ClusterSpec] = {frozenset(spec.devices): spec}

    def in_force(self, lane: str) -> DeployedPlan | None:
        """``lane``'s plan in force (None before its first deployment)."""
        pid = self.current.get(lane)
        return None if pid is None else self.by_id[pid]

    def deploy(self, plan: Plan, plan_id: int, lane: str) -> None:
        """Deploy ``plan`` as ``plan_id`` and make it ``lane``'s plan in force (raises ControllerError on a
        refusal, DeployFailed when a device goes down meanwhile, Unroutable when a relay it needs is down)."""
        try:
            parts = deployments(self.graph, plan, plan_id, self.model, self.seed, self._route)
        except SpecError as exc:
            raise Unroutable(f"plan cannot be routed over the live devices: {exc}") from None
        for d, dep in parts.items():
            # rid = plan id, so a refusal can be told apart from one of an older deployment that a
            # restarted worker may receive first (messages queued for it while it was down)
            self.workers.send(d, Header(Kind.DEPLOY, plan_id, {"deploy": dep.to_meta(), "retire": []}))
        deployed = DeployedPlan(plan_id, plan, parts, self._radio_bytes(plan))  # on the routes just taken
        self._await_confirmations(deployed)
        self.by_id[plan_id] = deployed
        previous, self.current[lane] = self.current.get(lane), plan_id
        self.retire_unused(previous)

    def _radio_bytes(self, plan: Plan) -> int:
        """Bytes a request on ``plan`` sends over radios, once per hop: a band relayed on is sent again,
        and a request whose band is stuck on its last hop is not nearly done."""
        transfers = layout(self.graph, plan).transfers
        return sum(t.nbytes * (len(self._route(t.src, t.dst)) - 1) for t in transfers)

    def _route(self, a: str, b: str) -> list[str]:
        """Route between two live devices, avoiding devices that are down."""
        up = self.workers.available
        if up not in self._live_specs:
            self._live_specs[up] = replace(
                self.spec,
                devices={d: v for d, v in self.spec.devices.items() if d in up},
                links=tuple(ln for ln in self.spec.links if ln.a in up and ln.b in up),
                source=a,
                sink=b,
            )
        return self._live_specs[up].route(a, b)

    def _await_confirmations(self, dep: DeployedPlan) -> None:
        """Wait until every device of ``dep`` confirmed it; on a refusal or a device found down, retire
        it and raise (ControllerError, DeployFailed)."""
        pid, waiting, refused = dep.plan_id, set(dep.parts), []

        def confirmations(dev: str, msg: Message) -> bool:
            if msg.header.kind == Kind.DEPLOY_OK and msg.header.meta.get("plan") == pid:
                waiting.discard(dev)
                return True
            if (
                msg.header.kind == Kind.ERROR
                and msg.header.meta.get("kind") == "deploy"
                and msg.header.rid == pid
            ):
                refused.append(f"worker {dev} refused plan {pid}: {msg.header.meta.get('message')}")
                return True
            return False

        deadline = time.time() + max(30.0, 5 * self.workers.dead_after_s)
        while waiting:
            if time.time() > deadline:
                raise ControllerError(f"worker(s) {sorted(waiting)} did not confirm plan {pid}")
            self.pump(self.workers.heartbeat_s, confirmations)
            if refused:
                self._retire(dep)
                raise ControllerError("; ".join(refused))
            if down := waiting - self.workers.available:
                self._retire(dep)
                raise DeployFailed(sorted(down))

    def retire_unused(self, pid: int | None) -> None:
        """Retire plan ``pid`` if no lane has it in force and no awaited request runs on it."""
        if pid is None or pid in self.current.values() or pid not in self.by_id:
            return
        if not self.attempts.using(pid):
            self._retire(self.by_id.pop(pid))

    def _retire(self, dep: DeployedPlan) -> None:
        for d in dep.parts:
            if d in self.workers.available:
                self.workers.send(d, Header(Kind.DEPLOY, 0, {"deploy": None, "retire": [dep.plan_id]}))

    def cancel(self, pid: int, wire: int) -> None:
        """Make the workers of plan ``pid`` drop attempt ``wire`` (the plan stays: other requests use it)."""
        meta = {"deploy": None, "retire": [], "cancel": [[pid, wire]]}
        for d in self.by_id[pid].parts:
            if d in self.workers.available:
                self.workers.send(d, Header(Kind.DEPLOY, 0, meta))
