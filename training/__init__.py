"""Training a MicroSplit policy, phase by phase (``python train.py --config ...`` is the script on top).

A fixed-slot run (agents/ppo.py's policy over a fixed action list; training/fixed_slot.py):

1. **Config** (training/config.py): one YAML validated by pydantic; ``env:`` is the environment.
2. **Actions** (training/actions.py; skipped with ``--init``, which reuses the policy's own): the oracle's
   shapes on sampled snapshots plus the structured ones, the best ``shapes.keep`` kept.
3. **Behaviour cloning** (training/cloning.py): the policy fitted to the oracle's soft labels.
4. **PPO** (training/fixed_slot.py, training/callbacks.py): MaskablePPO with validation on fixed worlds
   against the oracle (training/oracle.py), keeping the best policy.
5. **Held-out comparison** (training/compare.py): the shipped policy, the oracle and other planners on
   identical snapshots of held-out worlds.

A ``kind: staged`` run (the policy for any cluster; training/staged.py, training/staged_labels.py):
optimiser labels replayed as sub-steps, behaviour cloning, PPO, validation against the optimiser.

Sampling states for the oracle runs in worker processes (training/sampling.py); every environment prices
requests on the shared simulator (env/simulator.py).
"""
