"""cvkit's training engine, one step per module (see docs/architecture.md).

- ``phase``: one pass over a loader (``run_phase``): the batch loop of training, validation and
  ``cvkit eval``, with mixed precision, the finiteness checks and the loader's failures;
- ``rng``: seeding, and the random state a checkpoint saves and a resume restores;
- ``rundir``: the run directory: its name, metrics.csv, the report pictures, atomic writes;
- ``checks``: why a run cannot learn as configured (warnings said before training).

``cvkit.train.fit`` puts them together.
"""
