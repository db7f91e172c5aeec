"""The model zoo's architectures, one module per family, on the partitioning protocol of ``base``.

runtime/models.py builds them by name (seeded weights or a checkpoint) and views any model as layers.
"""
