"""Make ablate's Hydra plugins (hydra_plugins/ in this repository) discoverable however ablate runs.

Hydra finds plugins by walking the `hydra_plugins` namespace package. From a fresh clone,
`python ablate/run.py` puts the repository root on sys.path and the walk finds them; an editable
install (`pip install -e .`, setuptools' PEP 660 finder) maps the namespace through a path hook that
`pkgutil.walk_packages` cannot list, so there they would be missed. Adding the directory to the
namespace's search path before Hydra scans makes both cases (and a regular install) work."""
from __future__ import annotations

from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "hydra_plugins"


def expose() -> None:
    if not PLUGINS.is_dir():
        return  # an installed copy without the repository: the plugins were installed as packages
    import hydra_plugins  # a namespace package (Hydra's own plugins live there too)

    if str(PLUGINS) not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(str(PLUGINS))
