"""Starting the server: the run's models loaded before the port opens (a wrong run is a one-line error,
not a server that answers 500), then uvicorn — in this process, or in ``workers`` processes that each load
the run themselves from the settings passed in the environment."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI

log = logging.getLogger(__name__)

#: the environment variable that hands a worker process its launch settings
LAUNCH_ENV = "TAILOR_SERVE_LAUNCH"


@dataclass(frozen=True)
class Launch:
    run: str
    search: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token_file: str | None = None
    device: str = "auto"
    bindings: tuple[str, ...] = ()
    #: a Qdrant URL (or local folder) holding the catalog, searched instead of the run's index.pt
    engine: str | None = None
    #: the engine's collection (default: the searched run folder's name)
    collection: str | None = None


def passive_openmp() -> None:
    """Make OpenMP's threads sleep, not spin, between parallel regions, unless the user chose otherwise.

    A server's forward passes share the cores with the threads that parse and decode requests, each of which
    gets an OpenMP team of its own for the torch ops of its preprocessing; spinning teams take cycles from the
    forward pass. Measured with bench/serve.py's load on Lite0 (2 cores, in turns): 16.8–18.5 img/s spinning,
    20.5–20.8 sleeping. Must run before torch is imported (OpenMP reads it once, when it loads)."""
    if "torch" in sys.modules:
        log.debug("torch is already imported: OMP_WAIT_POLICY left as it is")
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def read_token(path: str | None) -> str | None:
    """The bearer token in ``path`` (its first line), or None without a file."""
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no such token file")
    lines = file.read_text().strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise ValueError(f"{path}: the token must be at least 16 characters (e.g. `openssl rand -hex 32 > {path}`)")
    return token


def build_app(launch: Launch) -> FastAPI:
    """The app for ``launch``, its models loaded on the chosen device."""
    from tailor import configurables
    from tailor.run_inputs import bound_ann, bound_lookalike, bound_serve
    from tailor.serve.app import create_app
    from tailor.search.qdrant_engine import QdrantCatalog
    from tailor.serve.service import ServedRun

    if launch.bindings:
        configurables.parse([], list(launch.bindings))
    token = read_token(launch.token_file)
    engine = None
    if launch.engine:
        searched = Path(launch.search or launch.run)
        engine = QdrantCatalog.connect(launch.engine, launch.collection or searched.name)
    served = ServedRun.load(launch.run, launch.search, device=launch.device, engine=engine,
                            settings=bound_lookalike(), ann=bound_ann())
    return create_app(served, bound_serve(), token=token, host=launch.host)


def app_from_environment() -> FastAPI:
    """The uvicorn factory of a worker process (``--workers`` > 1)."""
    fields = json.loads(os.environ[LAUNCH_ENV])
    return build_app(Launch(**{**fields, "bindings": tuple(fields.get("bindings", ()))}))


def serve(launch: Launch, workers: int = 1, log_level: str = "info") -> None:
    """Serve until interrupted; Ctrl-C or SIGTERM finishes the requests in flight first."""
    import uvicorn

    common = dict(host=launch.host, port=launch.port, log_level=log_level, proxy_headers=False,
                  server_header=False, timeout_graceful_shutdown=60)
    if workers <= 1:
        uvicorn.run(build_app(launch), **common)
        return
    read_token(launch.token_file)  # a wrong token file fails here, not in every worker
    os.environ[LAUNCH_ENV] = json.dumps(asdict(launch))
    uvicorn.run("tailor.serve.launch:app_from_environment", factory=True, workers=workers, **common)
