"""Serve command: a trained run behind an HTTP API and a web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisytag.cli import app, console, err_console, fail  # noqa: F401
from noisytag.cli.inference import (
    ArchOpt,
    BackendOpt,
    BatchOpt,
    ModeOpt,
    StagesOpt,
    _names,
    _stage_list,
    given_settings,
    onnx_ready,
    resolve_or_fail,
)


@app.command(rich_help_panel="Inference")
def serve(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with finished fold models.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).", min=0, max=65535)] = 8000,
    backend: BackendOpt = None,
    mode: ModeOpt = None,
    batch_size: BatchOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Labels per answer (default).", min=1)] = 5,
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", help="Longest audio accepted, seconds.", min=0.1)
    ] = 600.0,
    max_mb: Annotated[
        float, typer.Option("--max-mb", help="Largest upload accepted, MB.", min=0.001)
    ] = 100.0,
    max_in_flight: Annotated[
        int,
        typer.Option(
            "--max-in-flight",
            help="Requests admitted at once (tagged in parallel with onnx backends); the others wait.",
            min=1,
        ),
    ] = 4,
    wait_seconds: Annotated[
        float, typer.Option("--wait-seconds", help="How long a request waits for a slot before 503.", min=0)
    ] = 10.0,
    stages: StagesOpt = None,
    arch: ArchOpt = None,
    device: Annotated[str, typer.Option(help="torch device (cpu, cuda).")] = "cpu",
) -> None:
    """Serve a run: POST /api/tag (JSON tags, timeline, log-mel), a web page at /, API docs at /docs.

    The ensemble is loaded once and shared by all requests. With an onnxruntime backend, members missing
    or stale in RUN_DIR/onnx are exported there first (a temporary folder when the run is read-only). Bad uploads (not audio, empty, undecodable,
    too long, too large) get a 4xx with a one-sentence reason. There is no authentication: keep --host
    on 127.0.0.1 unless the network is trusted.
    """
    import uvicorn  # heavy (torch via noisytag.serve.service): imported when the command runs

    from noisytag.serve.app import create_app
    from noisytag.serve.service import ServeSettings, open_service

    chosen, archs = _stage_list(stages), _names(arch)
    resolved = resolve_or_fail(run_dir, given_settings("serve", chosen, mode, backend, batch_size))
    settings = ServeSettings(top_k, max_seconds, max_mb, max_in_flight, wait_seconds)
    with onnx_ready(run_dir, resolved.cfg.backend, chosen, archs) as onnx_dir:
        try:
            service = open_service(
                run_dir,
                backend,
                mode,
                chosen,
                archs,
                device,
                settings,
                batch_size=batch_size,
                onnx_dir=onnx_dir,
            )
        except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
            fail(str(err))
        info = service.info
        where = (
            f"http://{host}:{port}/ (API docs at /docs)" if port else "a free port (uvicorn names it below)"
        )
        console.print(
            f"[green]serving[/] {info.run}: {info.members} model(s), {info.n_classes} classes, "
            f"{info.backend}/{info.mode}, on {where}",
            highlight=False,
        )
        if host not in ("127.0.0.1", "localhost", "::1"):
            err_console.print(
                f"[yellow]warning:[/] listening on {host} without authentication", highlight=False
            )
        uvicorn.run(create_app(service), host=host, port=port, log_level="info")
