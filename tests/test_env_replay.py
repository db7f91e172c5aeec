"""Recorded env steps replay bit-identically: both environments, fixed seeds and fixed actions, every
observation, mask, reward and info compared exactly with a recording made before the simulator was
split out of the env (tests/data/env_replay.json.gz). A refactoring of the env, its simulator or its
backends must not move a single bit of what a policy sees or earns.

Regenerate the recording only when a change of behaviour is intended:
``python tests/test_env_replay.py --write``.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

RECORDING = Path(__file__).resolve().parent / "data" / "env_replay.json.gz"
STEPS = 200

# The tiny model on tiny3 and small generated meshes, random endpoints, moving links, load and failures,
# short episodes and padded actions: every path of a step (valid, clamped, padding, failed, truncated).
CONFIG = {
    "model": "tiny",
    "clusters": ["tiny3"],
    "meshes": {"devices": [3, 6], "count": 3, "seed": 7},
    "random_endpoints": True,
    "requests_per_episode": 12,
    "gap_s": [0.0, 0.5],
    "max_stages": 4,
    "max_split": 3,
    "n_actions": 40,
    "cost": "flops",
    "dynamics": [
        {
            "links": {"default": {"kind": "random_walk", "mean": 30, "sigma": 8, "lo": 1, "hi": 60}},
            "load": {"kind": "random_walk", "lo": 0.4, "hi": 1.0},
            "failures": {"rate_per_min": 6.0, "mean_downtime_s": 5},
            "horizon_s": 120,
        },
        {
            "links": {"default": {"kind": "markov_outages", "levels_mbps": [5, 30, 60], "transition": 0.2}},
            "horizon_s": 120,
        },
    ],
}


def _info(info: dict) -> dict:
    """A step's info as plain JSON values (the plan as its JSON)."""
    out = {k: v for k, v in info.items() if k != "plan"}
    if "plan" in info:
        out["plan"] = info["plan"].plan.to_json()
    return out


def _step_record(obs, reward, terminated, truncated, info, mask) -> dict:
    return {
        "obs": np.asarray(obs, dtype=np.float32).tolist(),
        "reward": float(reward),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "info": _info(info),
        "mask": np.asarray(mask).astype(int).tolist(),
    }


def record_microsplit(steps: int = STEPS) -> list[dict]:
    """MicroSplitEnv: actions drawn from a fixed stream over the whole (padded) action space."""
    from env.partition_env import MicroSplitEnv

    env = MicroSplitEnv(CONFIG)
    rng = np.random.default_rng(123)
    obs, info = env.reset(seed=5)
    out = [{"reset": np.asarray(obs).tolist(), "info": info}]
    episode = 0
    for _ in range(steps):
        mask = env.action_masks()
        valid = np.flatnonzero(mask)
        action = int(rng.integers(env.action_space.n)) if rng.random() < 0.2 else int(rng.choice(valid))
        obs, reward, terminated, truncated, info = env.step(action)
        out.append({"action": action, **_step_record(obs, reward, terminated, truncated, info, mask)})
        if terminated or truncated:
            episode += 1
            obs, info = env.reset(seed=5 + episode)
            out.append({"reset": np.asarray(obs).tolist(), "info": info})
    return out


def record_staged(steps: int = STEPS) -> list[dict]:
    """StagedSplitEnv: sub-steps drawn from the valid (cut, factor) pairs, now and then an invalid one."""
    from env.staged_env import StagedSplitEnv

    env = StagedSplitEnv(CONFIG)
    rng = np.random.default_rng(321)
    obs, info = env.reset(seed=9)
    out = [{"reset": np.asarray(obs).tolist(), "info": info}]
    for _ in range(steps):
        mask = env.action_masks()
        valid = np.flatnonzero(mask)
        action = int(rng.integers(env.action_space.n)) if rng.random() < 0.05 else int(rng.choice(valid))
        obs, reward, terminated, truncated, info = env.step(action)
        out.append({"action": action, **_step_record(obs, reward, terminated, truncated, info, mask)})
        if terminated or truncated:
            obs, info = env.reset()
            out.append({"reset": np.asarray(obs).tolist(), "info": info})
    return out


def record() -> dict:
    return {"microsplit": record_microsplit(), "staged": record_staged()}


def _plain(data: dict) -> dict:
    """What the recording holds after a JSON round trip (tuples become lists)."""
    return json.loads(json.dumps(data))


def test_env_steps_replay_bit_identical():
    want = json.loads(gzip.decompress(RECORDING.read_bytes()))
    got = _plain(record())
    for kind in ("microsplit", "staged"):
        assert len(got[kind]) == len(want[kind]), kind
        for i, (g, w) in enumerate(zip(got[kind], want[kind], strict=True)):
            assert g == w, f"{kind}: record {i} differs"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_env_replay.py --write  (rewrites the recording)")
    RECORDING.parent.mkdir(exist_ok=True)
    RECORDING.write_bytes(gzip.compress(json.dumps(_plain(record())).encode(), mtime=0))
    print(f"wrote {RECORDING}")
