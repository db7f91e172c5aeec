"""The weight store: model skeletons and graphs, with the weights of only the units a worker runs.

A worker builds each model on the meta device and loads a unit's weights from the memory-mapped
checkpoint the first time it computes that unit, so a device never holds the weights of units it does
not run; without a checkpoint it builds the seeded model whole.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from runtime import models
from runtime.graph import LayerGraph
from runtime.limits import Limits, builds_to_evict, weight_bytes


@dataclass
class _Model:
    module: nn.Module
    layers: list[models.Layer]
    names: dict[int, str]  # id(module) -> qualified name in the state_dict
    graph: LayerGraph
    loaded: set[int] = field(default_factory=set)


class WeightStore:
    """Model skeletons and graphs, with the weights of the units this worker has run.

    With a checkpoint (``model_file``) a model is a meta-device skeleton whose units get their tensors
    from the memory-mapped checkpoint when first needed, and the checkpoint alone defines the weights;
    without one the seeded model is built whole. One entry per (model, seed, input shape), within the
    ``limits`` on builds and on seeded weight bytes: a new one evicts the least recently used ones no
    deployed plan needs (``in_use`` names those), and is refused before it is built when the entries in
    use leave no room, so no sequence of deployments (new seeds, new input shapes) can exhaust the
    device's memory. An entry evicted is rebuilt on demand.
    """

    def __init__(
        self,
        model_file: Path | None,
        limits: Limits,
        in_use: Callable[[], set[tuple]] = set,
        allowed_models: frozenset[str] = frozenset(),
    ):
        self.model_file = model_file
        self.allowed_models = allowed_models  # the user's models (import paths) this worker may import
        self.limits = limits
        self.in_use = in_use
        self._checkpoint: dict[str, torch.Tensor] | None = None
        self._models: OrderedDict[tuple, _Model] = OrderedDict()
        self._lock = threading.Lock()  # the I/O thread deploys while the compute thread computes

    def prepare(self, name: str, seed: int, shape: tuple[int, ...], units: Iterable[int] = ()) -> LayerGraph:
        """The graph of the model for this input shape, with the weights of ``units`` loaded."""
        if models.is_user_model(name) and name not in self.allowed_models:
            raise models.ModelError(
                f"model {name!r} is not in the zoo, and this worker imports a model of yours only when "
                f"started with --allow-model {name}"
            )
        key = self.key(name, seed, shape)
        with self._lock:
            model = self._models.get(key)
            if model is None:
                self._make_room(name)
        if model is None:  # built without the lock: the status (PONG) reads the store meanwhile
            model = self._build(name, seed, shape)
        with self._lock:
            model = self._models.setdefault(key, model)
            self._models.move_to_end(key)
            for u in sorted(set(units) - model.loaded):
                for module in model.layers[u][1]:
                    self._load_module(module, model.names)
                model.loaded.add(u)
            return model.graph

    def _build(self, name: str, seed: int, shape: tuple[int, ...]) -> _Model:
        module = models.skeleton(name) if self.model_file else models.build(name, seed=seed)
        layers = models.layers(module)
        graph = LayerGraph.from_model(module, shape, name)
        model = _Model(module, layers, {id(m): n for n, m in module.named_modules()}, graph)
        if not self.model_file:
            model.loaded.update(range(len(layers)))
        return model

    def key(self, name: str, seed: int, shape: tuple[int, ...]) -> tuple:
        """What tells two builds apart (with a checkpoint the seed does not matter)."""
        return name, None if self.model_file else seed, tuple(shape)

    def _make_room(self, name: str) -> None:
        """Evict builds no plan needs until one of ``name`` fits, or refuse it (caller holds the lock)."""
        held = {key: self._allocated(m.module) for key, m in self._models.items()}
        new, limits = self._allocated(models.skeleton(name)), self.limits
        for key in builds_to_evict(held, self.in_use(), new, limits.max_models, limits.max_model_bytes):
            del self._models[key]

    def _allocated(self, module: nn.Module) -> int:
        """The memory a build of ``module`` holds: its weights when seeded; none with a checkpoint, whose
        loaded units view the one memory-mapped file that every build shares (the OS can drop its pages)."""
        return 0 if self.model_file else weight_bytes(module)

    def _load_module(self, module: nn.Module, names: dict[int, str]) -> None:
        wanted = module.state_dict()
        if not wanted:
            return
        if self._checkpoint is None:
            try:
                self._checkpoint = torch.load(self.model_file, mmap=True, weights_only=True)
            except Exception as exc:  # torch raises several unrelated types for unreadable files
                raise models.ModelError(f"cannot read checkpoint {self.model_file}: {exc}") from None
            if not isinstance(self._checkpoint, dict):
                raise models.ModelError(f"checkpoint {self.model_file} is not a state_dict")
        prefix = names.get(id(module))
        if prefix is None:
            raise models.ModelError(f"{type(module).__name__} with weights is not part of the model")
        state = {}
        for key, meta in wanted.items():
            tensor = self._checkpoint.get(f"{prefix}.{key}")
            if not isinstance(tensor, torch.Tensor) or tensor.shape != meta.shape:
                raise models.ModelError(
                    f"checkpoint {self.model_file} lacks {prefix}.{key} {tuple(meta.shape)}"
                )
            state[key] = tensor
        module.load_state_dict(state, assign=True)

    def loaded(self) -> dict[str, list[int]]:
        """Loaded units per model, keyed ``name:CxHxW`` (plus ``:seed`` without a checkpoint)."""
        with self._lock:
            return {
                ":".join([name, "x".join(map(str, shape))] + ([] if seed is None else [str(seed)])): sorted(
                    m.loaded
                )
                for (name, seed, shape), m in self._models.items()
            }

    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(
                t.numel() * t.element_size()
                for m in self._models.values()
                for u in m.loaded
                for module in m.layers[u][1]
                for t in module.state_dict().values()
            )
