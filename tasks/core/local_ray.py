"""The environment a local Ray starts in, so that it talks to 127.0.0.1 and nothing else.

Ray 2.60 reaches out of the machine three ways, each seen with ``strace -e connect``:
- it takes this machine's outward address for the node (a UDP "connection" to 8.8.8.8 finds
  it) and runs its servers there, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (a constant
  read when ``ray`` is first imported, so it is also set on the module if that has happened);
- it reports usage statistics to ray.io unless ``RAY_USAGE_STATS_ENABLED=0``;
- its dashboard process, started even with ``include_dashboard=False``, asks the cloud
  metadata service (169.254.169.254, metadata.google.internal) which cloud it runs on, unless
  ``~/ray_bootstrap_config.yaml`` exists (``ray._common.usage.usage_lib``
  ``get_cluster_config_to_report``, called whether usage stats are on or not). So Ray's
  processes start with ``HOME`` at a folder of this user's holding an empty one and, as
  ``.ray``, a link to the real ``~/.ray`` (where Ray keeps the token its processes
  authenticate with), and with ``PREFECT_HOME`` (by default under ``HOME``) where it was.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def ray_home() -> Path:
    """The ``HOME`` a local Ray's processes get (see the module docstring); made once."""
    real_home = Path(os.path.expanduser("~"))
    home = Path(tempfile.gettempdir(), f"clipflow-ray-home-{os.getuid()}")
    home.mkdir(mode=0o700, exist_ok=True)
    (real_home / ".ray").mkdir(exist_ok=True)
    link = home / ".ray"
    if not link.is_symlink():
        link.symlink_to(real_home / ".ray")
    (home / "ray_bootstrap_config.yaml").write_text("# not started by Ray's cluster launcher\n")
    return home


@contextmanager
def local_ray_environment() -> Iterator[None]:
    """Around a local Ray's whole life: the processes it starts inherit these settings."""
    from prefect.settings import PREFECT_HOME

    settings = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PREFECT_HOME": str(PREFECT_HOME.value()),
        "HOME": str(ray_home()),
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    constants = sys.modules.get("ray._private.ray_constants")
    cluster = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = cluster  # type: ignore[attr-defined]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
