"""Fold executors: where the independent folds of a stage train (scale-out over GPUs and machines).

:func:`noisytag.runs.pipeline.run_pipeline` hands each stage's (architecture, fold) jobs to an executor and
waits for all of them before the next stage, whose noisy-clip selection (stages 3–4) the driver has
computed once beforehand. Every executor has the same interface
(:class:`~noisytag.runs.pipeline.FoldExecutor`): a context manager with ``run_folds(ctx, jobs)`` and
``stage_at_once``, so the pipeline has one loop. :class:`RayExecutor` runs every job as a Ray task: the task opens its own
:class:`~noisytag.runs.context.RunContext` on the same run directory and calls
:func:`~noisytag.runs.pipeline.run_fold`, so it writes exactly what the in-process loop writes.

Kill safety is the pipeline's own: a task whose worker dies is retried (Ray's ``max_retries``) and
resumes from the fold's epoch checkpoint; a driver run again with the same command skips every fold
that has its done-marker. The run directory (and the data set with its feature cache) must sit on
storage every node sees at the same path; each task checks that first, against a token the driver
wrote. Ray is optional (``pip install 'noisytag[ray]'``) and imported only inside this module's
functions.

:data:`EXECUTORS` is the registry the CLI's ``--executor`` choices come from: ``local`` (the default:
:class:`~noisytag.runs.pipeline.InProcessExecutor`, the folds one after another in this process,
architecture by architecture, which is also what ``run_pipeline(executor=None)`` runs) and ``ray``.
``build(name, address=..., gpus_per_task=..., cpus_per_task=..., max_tasks=...)`` makes one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from noisytag.config import RunConfig, config_from_dict
from noisytag.fileio import write_json, write_text
from noisytag.registry import Registry
from noisytag.rundir import RunDir
from noisytag.runs.context import RunContext, open_run
from noisytag.runs.pipeline import FoldExecutor, FoldJob, InProcessExecutor, run_fold

log = logging.getLogger(__name__)

INSTALL_HINT = "--executor ray needs Ray, which is not installed: pip install 'noisytag[ray]'"
# Test hook (read by the driver, acted on by the task): "ARCH/STAGE/FOLD:MARKER" makes the worker that
# trains that fold exit hard once its first epoch checkpoint exists, unless MARKER exists (then it is
# made first), so Ray's retry must resume the fold from the checkpoint.
KILL_ENV = "NOISYTAG_TEST_KILL_FOLD"
MAX_RETRIES = 3


class ExecutorError(RuntimeError):
    """A fold job failed or the executor cannot run; the message is one line for the CLI."""


def require_ray() -> Any:
    """The ``ray`` module, or :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(INSTALL_HINT) from None
    return ray


def job_name(job: FoldJob) -> str:
    return f"{job.arch}/stage{job.stage}/fold{job.fold}"


# ----------------------------------------------------------------------------------------------
# the task (runs in a Ray worker, on any node)


@dataclass(frozen=True)
class TaskSpec:
    """What every fold task of one stage shares: plain data, cheap to ship to a worker."""

    data_dir: str  # absolute
    run_dir: str  # absolute
    config: dict  # RunConfig.to_dict() of the driver (already adopted by the run directory)
    token: str  # the content of the run directory's executor token
    threads: int  # torch threads: the task's CPUs, so tasks sharing a machine do not oversubscribe it
    cwd: str  # the driver's working directory (relative paths in the config resolve against it)
    kill_once: str | None = None  # KILL_ENV's value on the driver


def check_shared(data_dir: str | Path, run_dir: str | Path, token: str) -> None:
    """Fail with one line unless this node sees the driver's data set and run directory (its token)."""
    host = socket.gethostname()
    if not Path(data_dir).exists():
        raise ExecutorError(
            f"node {host} cannot see the data set {data_dir}: put it on storage every node mounts at the same path"
        )
    path = RunDir(run_dir).executor_token
    try:
        seen = path.read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        raise ExecutorError(
            f"node {host} cannot see the run directory {run_dir} (its token from the driver is "
            f"{'missing' if seen is None else 'different'}): put the run directory on storage every node "
            "mounts at the same path (NFS, a cluster file system)"
        )


def _arm_kill(spec: TaskSpec, job: FoldJob) -> threading.Event | None:
    """The test hook of :data:`KILL_ENV`: a watcher that kills this worker once, mid-fold."""
    target, _, marker = (spec.kill_once or "").partition(":")
    if target != f"{job.arch}/{job.stage}/{job.fold}" or Path(marker).exists():
        return None
    ckpt = RunDir(spec.run_dir).fold_checkpoint(job.arch, job.stage, job.fold)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.01):
            if ckpt.is_file():
                Path(marker).write_text("killed\n")
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    return stop


def fold_task(spec: TaskSpec, job: FoldJob, selected: pd.DataFrame | None) -> dict[str, float]:
    """Train one fold in a Ray worker, as the in-process loop would.

    ``selected``: the driver's selection for (arch, stage) in stages 3–4, so no task recomputes or
    rewrites it. Returns ``train_s`` (the fold's seconds, as its done-marker says), ``startup_s``
    (checks and :func:`open_run`: data set, config, feature caches, folds) and ``task_s`` (the whole task).
    """
    started = time.perf_counter()
    torch.set_num_threads(spec.threads)
    check_shared(spec.data_dir, spec.run_dir, spec.token)
    if os.path.isdir(spec.cwd):
        os.chdir(spec.cwd)
    stop = _arm_kill(spec, job)
    try:
        ctx = open_run(
            spec.data_dir, spec.run_dir, config_from_dict(spec.config), progress=False, writer=False
        )
        if selected is not None:
            ctx.selections[(job.arch, job.stage)] = selected
        opened = time.perf_counter()
        run_fold(ctx, job.arch, job.stage, job.fold)
    finally:
        if stop is not None:
            stop.set()
    return {
        "train_s": float(ctx.run.fold_done(job.arch, job.stage, job.fold).read_text()),
        "startup_s": opened - started,
        "task_s": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------------------------
# the driver


@dataclass
class RayExecutor:
    """Every fold job a Ray task; :meth:`run_folds` returns when all of a stage's tasks have finished.

    Use as a context manager: entering checks that Ray is installed; the first stage connects to
    ``address`` ("auto": a running cluster; None: a local instance started here, shut down on exit).
    ``gpus_per_task`` ≤ 1 (0.5 packs two folds on a GPU); None = 1 when the cluster has GPUs, else 0.
    ``cpus_per_task`` None = the cluster's CPUs per GPU, or on CPUs alone shared out over the tasks
    that run at once. ``max_tasks`` caps how many run at once (None: as many as resources allow).
    ``on_done(job, seconds)`` is called on the driver after each finished job. Each stage's folds of
    every architecture are one batch (``stage_at_once``), so they can all run at once.
    """

    stage_at_once: ClassVar[bool] = True

    address: str | None = None
    gpus_per_task: float | None = None
    cpus_per_task: int | None = None
    max_tasks: int | None = None
    max_retries: int = MAX_RETRIES
    on_done: Callable[[FoldJob, float], None] | None = None
    _ray: Any = field(default=None, init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)
    ray_start_s: float = field(default=0.0, init=False)  # starting the local Ray instance (0: joined one)
    task_stats: list[dict] = field(default_factory=list, init=False)  # per finished task: job and seconds

    def __enter__(self) -> RayExecutor:
        if self.gpus_per_task is not None and not 0 <= self.gpus_per_task <= 1:
            raise ExecutorError(
                f"--gpus-per-task: a fold trains on at most one GPU (0 to 1), got {self.gpus_per_task}; "
                "for DDP over several GPUs use `noisytag train --devices N`"
            )
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ExecutorError(f"--cpus-per-task: at least 1, got {self.cpus_per_task}")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ExecutorError(f"--max-tasks: at least 1, got {self.max_tasks}")
        self._ray = require_ray()
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def _connect(self) -> Any:
        ray = self._ray or require_ray()
        self._ray = ray
        if not ray.is_initialized():
            started = time.perf_counter()
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            self._started = True
            self.ray_start_s = time.perf_counter() - started
        return ray

    def resources(self, n_jobs: int) -> tuple[int, float]:
        """(CPUs, GPUs) per task, checked against the largest node so no task waits forever."""
        ray = self._connect()
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        total_cpus = sum(n.get("CPU", 0) for n in nodes)
        total_gpus = sum(n.get("GPU", 0) for n in nodes)
        gpus = self.gpus_per_task if self.gpus_per_task is not None else (1.0 if total_gpus >= 1 else 0.0)
        if self.cpus_per_task is not None:
            cpus = self.cpus_per_task
        elif gpus > 0:
            cpus = max(1, int(total_cpus * gpus // max(total_gpus, 1)))
        else:
            cpus = max(1, int(total_cpus // max(1, min(n_jobs, self.max_tasks or n_jobs))))
        node_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        node_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        if cpus > node_cpus or gpus > node_gpus:
            raise ExecutorError(
                f"a fold task asks for {cpus} CPU(s) and {gpus:g} GPU(s), but the largest Ray node has "
                f"{node_cpus:g} CPU(s) and {node_gpus:g} GPU(s): lower --cpus-per-task / --gpus-per-task"
            )
        return cpus, gpus

    def run_folds(self, ctx: RunContext, jobs: Sequence[FoldJob]) -> None:
        """Submit the unfinished jobs (at most ``max_tasks`` at once) and wait for all of them."""
        run, t = ctx.run, ctx.cfg.train
        if str(t.devices) not in ("auto", "1") or t.num_nodes != 1:
            raise ExecutorError(
                f"--executor ray trains each fold on one device: train.devices must be auto or 1 and "
                f"train.num_nodes 1 (got {t.devices} and {t.num_nodes}); DDP is `noisytag train --devices N`"
            )
        todo = [j for j in jobs if not run.fold_done(j.arch, j.stage, j.fold).is_file()]
        if not todo:
            return
        # Longest first, judged by the same fold's previous stage, so the slow tasks do not start last.
        timings = run.info().get("timings", {})
        todo.sort(key=lambda j: -timings.get(f"{j.arch}/stage{j.stage - 1}/fold{j.fold}", 0.0))
        ray = self._connect()
        cpus, gpus = self.resources(len(todo))
        token = uuid.uuid4().hex
        write_text(run.executor_token, token + "\n")
        spec = TaskSpec(
            data_dir=str(Path(ctx.data_dir).resolve()),
            run_dir=str(run.root.resolve()),
            config=ctx.cfg.to_dict(),
            token=token,
            threads=cpus,
            cwd=os.getcwd(),
            kill_once=os.environ.get(KILL_ENV),
        )
        task = ray.remote(fold_task)
        options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": self.max_retries}
        log.info("%d fold task(s), %d CPU(s) and %g GPU(s) each", len(todo), cpus, gpus)
        pending, running, submitted = list(todo), {}, {}
        try:
            while pending or running:
                while pending and (self.max_tasks is None or len(running) < self.max_tasks):
                    job = pending.pop(0)
                    selected = ctx.selections.get((job.arch, job.stage))
                    ref = task.options(name=job_name(job), **options).remote(spec, job, selected)
                    running[ref], submitted[ref] = job, time.perf_counter()
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    job = running.pop(ref)
                    stats = self._result(ref, job)
                    stats["wall_s"] = time.perf_counter() - submitted[ref]
                    log.info(
                        "%s done in %.1f s (training %.1f s, start-up %.1f s)",
                        job_name(job),
                        stats["wall_s"],
                        stats["train_s"],
                        stats["startup_s"],
                    )
                    self.task_stats.append({"job": job_name(job), **stats})
                    if self.on_done is not None:
                        self.on_done(job, stats["train_s"])
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=True)
            raise
        finally:
            run.executor_token.unlink(missing_ok=True)
            self._record(run)

    def _result(self, ref: Any, job: FoldJob) -> dict[str, float]:
        """The task's figures (:func:`fold_task`), or :class:`ExecutorError` with its one-line reason."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None) or err
            raise ExecutorError(f"{job_name(job)}: {_first_line(cause)}") from None
        except ray.exceptions.RayError as err:  # the worker or its node died more than max_retries times
            raise ExecutorError(
                f"{job_name(job)}: {type(err).__name__} after {self.max_retries} retries: {_first_line(err)}"
            ) from None

    def _record(self, run: RunDir) -> None:
        """executor.json: the tasks' figures (overhead per task); run.json's timings are close_stage's."""
        write_json(run.executor_log, {"ray_start_s": self.ray_start_s, "tasks": self.task_stats})


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------
# the registry (chosen on the command line, not in the config)

EXECUTORS = Registry("executor", "--executor")


@EXECUTORS.register("local")
def _local(**ray_options: Any) -> InProcessExecutor:
    """In-process, one fold after another (or this DDP job's ranks together); the Ray options mean
    nothing here and are ignored."""
    return InProcessExecutor()


@EXECUTORS.register("ray")
def _ray(
    address: str | None = None,
    gpus_per_task: float | None = None,
    cpus_per_task: int | None = None,
    max_tasks: int | None = None,
    **more: Any,
) -> RayExecutor:
    """Every fold a Ray task (:class:`RayExecutor`; entering it checks the options and that Ray is there)."""
    return RayExecutor(address, gpus_per_task, cpus_per_task, max_tasks, **more)


def build(name: str, **options: Any) -> FoldExecutor:
    """The executor ``name`` (ConfigError naming --executor and the known names if there is none)."""
    return EXECUTORS.build(name, **options)


def validate(cfg: RunConfig, name: str | None = None) -> None:
    """Check executor ``name`` (the config names none, so without a name there is nothing to check)."""
    EXECUTORS.validate(cfg, name)
