"""disnet env layer: traces, the time-varying network, the cost model and the MicroSplit environment.

Importing ``env`` registers ``disnet/MicroSplit-v0`` with Gymnasium (env/partition_env.py); the
environment module itself is only imported when ``gym.make`` asks for it.
"""

import gymnasium as gym

if "disnet/MicroSplit-v0" not in gym.registry:
    gym.register(id="disnet/MicroSplit-v0", entry_point="env.partition_env:MicroSplitEnv")
