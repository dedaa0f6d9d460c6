"""Runs: the driver that executes a run plan (``pipeline``), where folds run (``executors``), what a run
has loaded (``context``), scoring and stage tables (``scoring``) and the run's recorded facts (``runstats``).

May import learn, infer, models, audio, data and the base modules; never serve, report, ablate or cli.
"""
