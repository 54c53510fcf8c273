"""``palisade serve``, ``worker``, ``migrate`` and ``dev-cert``: running the processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import settings_or_exit
from gateway.settings import get_settings, help_for


@click.command()
@click.option("--host", default=None, help=help_for("host"))
@click.option("--port", type=int, default=None, help=help_for("port"))
@click.option("--workers", type=int, default=1, show_default=True, help="Gateway worker processes.")
@click.option("--no-worker", is_flag=True, help="Embedded mode: do not start the Celery worker process beside it.")
def serve(host: str | None, port: int | None, workers: int, no_worker: bool) -> None:
    """Run the gateway (migrates the embedded SQLite database first). In embedded mode (no Redis) it also starts
    one Celery worker process, so datasets, training runs and batches work on a fresh machine."""
    import uvicorn

    from gateway.db.migrate import upgrade
    from gateway.tls import uvicorn_tls_options

    # flags win over the environment, and the app (token issuer, metadata URLs) must see the same values
    if host:
        os.environ["PALISADE_HOST"] = host
    if port:
        os.environ["PALISADE_PORT"] = str(port)
    get_settings.cache_clear()
    settings = settings_or_exit()
    if settings.is_sqlite:
        upgrade(settings)
    try:
        kwargs: dict[str, Any] = uvicorn_tls_options(settings.tls_cert, settings.tls_key)  # TLS 1.2+, HSTS
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None

    worker: subprocess.Popen[bytes] | None = None
    if settings.embedded_mode and not no_worker and settings.serve_worker:
        # the worker ends with serve, however serve ends (a SIGKILL or an OOM kill skips the `finally` below)
        worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu,gpu",
                                   "--parent-pid", str(os.getpid())], env=os.environ.copy())
    try:
        uvicorn.run(
            "gateway.app:create_app", factory=True, host=settings.host, port=settings.port,
            workers=workers, loop="uvloop", http="httptools", access_log=False, log_level="warning",
            log_config=None, timeout_graceful_shutdown=int(settings.shutdown_grace_s), **kwargs,
        )
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()  # Celery's warm shutdown: the job in hand is requeued (acks_late), not lost
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()


@click.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    from gateway.db.migrate import upgrade

    settings = settings_or_exit()
    upgrade(settings)
    click.echo(f"database at head ({'sqlite' if settings.is_sqlite else 'postgresql'})")


@click.command()
@click.option("--queues", default="cpu", show_default=True, help="Comma-separated Celery queues (cpu, gpu).")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Jobs run at once.")
@click.option("--beat", is_flag=True, help="Also run the scheduler (Celery beat) in this worker: scheduled backups "
                                           "(PALISADE_BACKUP_INTERVAL_S), the runs reaper (PALISADE_REAP_INTERVAL_S) "
                                           "and continuous evaluation (PALISADE_EVAL_INTERVAL_S). Exactly one worker "
                                           "of a deployment.")
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="Warm-shut down when this process (the `serve` that started the worker) is gone.")
def worker(queues: str, concurrency: int, beat: bool, parent_pid: int | None) -> None:
    """Run a Celery worker for datasets, training runs and batches."""
    from gateway.jobs import make_worker_app

    if parent_pid is not None:
        _end_with_parent(parent_pid)

    settings = settings_or_exit()
    if settings.is_sqlite:
        from gateway.db.migrate import upgrade

        upgrade(settings)
    app = make_worker_app(settings)
    argv = ["worker", "--loglevel=INFO", f"--queues={queues}", f"--concurrency={concurrency}",
            "--pool=prefork" if concurrency > 1 else "--pool=solo", "--without-gossip", "--without-mingle"]
    if beat:  # the schedule's state file lives in the data dir (one beat per deployment)
        argv += ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
    app.worker_main(argv)


def _end_with_parent(parent_pid: int) -> None:
    """SIGTERM (Celery's warm shutdown: the job in hand is requeued, acks_late) once ``parent_pid`` is gone.

    Linux: the kernel sends it when the parent dies, even by SIGKILL (``PR_SET_PDEATHSIG``). Elsewhere a daemon
    thread notices the re-parenting within a second. Either way, a parent already gone by now ends this at once."""
    import signal

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    else:
        import threading
        import time

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


@click.command("dev-cert")
@click.option("--host", "hosts", multiple=True,
              help="Name or IP on the certificate (repeat; default localhost, 127.0.0.1, ::1).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory (default <data_dir>/tls).")
def dev_cert(hosts: tuple[str, ...], out_dir: Path | None) -> None:
    """Make a local CA and a server certificate to try TLS; prints the settings to use."""
    from gateway.tls import make_dev_cert

    paths = make_dev_cert(out_dir or settings_or_exit().data_dir / "tls", hosts or ("localhost", "127.0.0.1", "::1"))
    click.echo(f"CA certificate (trust it in clients): {paths['ca']}", err=True)
    click.echo(f"export PALISADE_TLS_CERT={paths['cert']}")
    click.echo(f"export PALISADE_TLS_KEY={paths['key']}")
