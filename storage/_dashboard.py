"""optuna-dashboard on a storage, listening on this machine only unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from maskopt.errors import StorageError

from ._artifacts import DEFAULT_ARTIFACT_DIR, artifact_store
from ._rdb import open_storage
from ._urls import redact, resolve_url

logger = logging.getLogger(__name__)


def serve_dashboard(*, storage: str | None = None, host: str = "127.0.0.1", port: int = 8080,
                    artifacts: str | Path = DEFAULT_ARTIFACT_DIR) -> None:
    """Serve optuna-dashboard on ``storage`` (with the trials' ``artifacts``) until interrupted.

    Raises:
        StorageError: No such storage, or ``host``:``port`` cannot be listened on.
    """
    from optuna_dashboard import run_server

    opened = open_storage(storage, heartbeat_interval=None, create=False)
    store = artifact_store(artifacts)
    shown_host = f"[{host}]" if ":" in host else host
    logger.info("optuna-dashboard: http://%s:%d/  (storage %s; Ctrl-C stops it)", shown_host, port,
                redact(resolve_url(storage)))
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if not loopback:
        logger.warning("listening on %s, not loopback. The dashboard has no authentication: anyone who can reach "
                       "this port can read and change the studies.", host)
    try:
        run_server(opened, host=host, port=port, artifact_store=store)
    except OSError as e:
        raise StorageError(f"cannot listen on {host}:{port} ({e.strerror or e}). Choose another `port`, or stop "
                           f"what uses it.") from e
