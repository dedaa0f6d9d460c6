"""The label-review service: a queue of the noisy clips the detectors distrust most, an append-only log of
the reviewers' decisions, the corrected manifest those decisions make, and a reviewer simulator that answers
from the truth (to measure the cleaning curve). ``app`` is the HTTP plumbing apart from it (``web/``).

It reads a run (``plan.json``, ``folds.csv``, the last selection stage's audits, the out-of-fold arrays) and
its data set, and writes only under ``RUN/review/``; the queue and the cards never read truth columns. Training
runs as a separate ``noisytag`` process (``retrain``), so the review imports no training code.

A front door: may import infer, audio, data and the base modules (config, plan, rundir, fileio); never learn
or runs; nothing imports it but the CLI.
"""
