"""Experiment trackers (the `logger` axis). metrics.jsonl is always written; these add to it."""
from __future__ import annotations

import configparser
import netrc
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from components.registry import OptionConfig, axis, register

axis("logger", "experiment tracker beside metrics.jsonl", kind="logging")


@register("logger", "none")
class NoLogger:
    """Built as `Option(cfg, run_dir=, config=, group=, run_name=, tags=)`; this one ignores them."""

    def __init__(self, cfg: OptionConfig, **_: Any):
        pass

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def _wandb_settings_files(env: Mapping[str, str], home: Path, cwd: Path) -> list[Path]:
    """W&B's settings files, lowest precedence first: the global one (`wandb login --host`, `wandb
    offline` write it) and the workspace one in ./wandb/."""
    config_dir = Path(env["WANDB_CONFIG_DIR"]) if env.get("WANDB_CONFIG_DIR") else home / ".config" / "wandb"
    return [config_dir / "settings", cwd / "wandb" / "settings"]


def _wandb_setting(key: str, files: list[Path]) -> tuple[str, Path] | None:
    """The value of `key` in the [default] section of the last settings file that sets it."""
    found = None
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        if parser.get("default", key, fallback=""):
            found = parser.get("default", key), path
    return found


def _netrc_path(env: Mapping[str, str], home: Path) -> Path:
    """The netrc file W&B reads: $NETRC, else ~/.netrc (~/_netrc where only that exists)."""
    if env.get("NETRC"):
        return Path(env["NETRC"]).expanduser()
    unix, windows = home / ".netrc", home / "_netrc"
    return windows if windows.exists() and not unix.exists() else unix


def _netrc_has_login(path: Path, host: str) -> bool:
    """Whether `path` holds a password (W&B's API key) for `host` (matched as W&B matches it: the
    URL's netloc, host[:port])."""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode_and_reason(env: Mapping[str, str] | None = None, home: Path | None = None,
                          cwd: Path | None = None) -> tuple[str, str]:
    """The W&B mode W&B's own configuration asks for, and why, read without importing wandb (which
    costs about 2 s) and without contacting any server:

    1. `WANDB_MODE`;  2. a W&B sweep agent (`WANDB_SWEEP_ID`): online, it must report back;
    3. `mode` in W&B's settings files (`wandb offline`, `wandb online`, `wandb disabled` set it);
    4. credentials for the server W&B would use (`WANDB_BASE_URL`, else the settings files' `base_url`,
       else api.wandb.ai): `WANDB_API_KEY`, or a login for that host in the netrc file (`NETRC` or
       ~/.netrc, where `wandb login [--host URL]` writes it): online;
    5. none of these: offline, into the run directory, for `wandb sync` later.
    """
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home()) if home is None else home
    cwd = Path.cwd() if cwd is None else cwd
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"], f"WANDB_MODE={env['WANDB_MODE']}"
    if env.get("WANDB_SWEEP_ID"):
        return "online", f"started by the W&B sweep agent of sweep {env['WANDB_SWEEP_ID']}"
    files = _wandb_settings_files(env, home, cwd)
    if setting := _wandb_setting("mode", files):
        mode, path = setting
        return ("offline" if mode == "dryrun" else mode), f"mode = {mode} in W&B's settings file {path}"
    configured_url = _wandb_setting("base_url", files)
    base_url = env.get("WANDB_BASE_URL") or (configured_url[0] if configured_url else DEFAULT_WANDB_HOST)
    host = urlsplit(base_url).netloc or base_url
    if env.get("WANDB_API_KEY"):
        return "online", f"WANDB_API_KEY is set (server {base_url})"
    netrc_file = _netrc_path(env, home)
    if _netrc_has_login(netrc_file, host):
        return "online", f"a login for {host} in {netrc_file}"
    return "offline", (f"no WANDB_MODE, no WANDB_API_KEY and no login for {host} in {netrc_file} "
                       f"(`wandb login` makes one)")


@dataclass
class WandbConfig(OptionConfig):
    project: str = "ablate"
    entity: Optional[str] = None


@register("logger", "wandb")
class WandbLogger:
    """One W&B run per training run: group = the sweep, name = the overrides, tags = the choices.

    `import wandb` and `wandb.init` (which starts W&B's service process) take about 2 s of mostly
    Python work. They run in a background thread started at the first `log`, so they overlap training
    steps (torch releases the GIL) instead of delaying the first one; metrics logged before the run is
    up are queued and sent in order. If W&B cannot start, training goes on (metrics.jsonl has every
    logged step) and the reason is printed once."""

    Config = WandbConfig

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any], group: str, run_name: str,
                 tags: list[str]):
        mode, self.mode_reason = wandb_mode_and_reason()
        self.init_kwargs = dict(project=cfg.project, entity=cfg.entity, group=group, name=run_name, tags=tags[:64],
                                config=config, dir=str(run_dir), mode=mode,
                                reinit="create_new")  # one process may log several runs at once (hydra/launcher=batched)
        self.run: Any = None
        self.error: BaseException | None = None
        self.pending: list[tuple[dict[str, Any], int]] = []
        self.starting: threading.Thread | None = None
        self.started = False

    def _start(self) -> None:
        try:
            import wandb

            self.run = wandb.init(**self.init_kwargs, settings=wandb.Settings(quiet=True))
        except BaseException as error:  # noqa: BLE001  (reported by _ready, on the training thread)
            self.error = error
        else:
            if self.init_kwargs["mode"] == "offline":
                where = self.init_kwargs["dir"]
                print(f"W&B offline ({self.mode_reason}): run in {where}/wandb; upload later with "
                      f"`wandb sync {where}/wandb/offline-run-*`", file=sys.stderr)

    def _ready(self, wait: bool) -> bool:
        """Whether the W&B run is up (waiting for it when `wait`); sends the queued metrics once it is."""
        if not self.started:
            self.started = True
            self.starting = threading.Thread(target=self._start, daemon=True, name="wandb-init")
            self.starting.start()
        if self.starting is not None:
            if not wait and self.starting.is_alive():
                return False
            self.starting.join()
            self.starting = None
            if self.error is not None:
                print(f"W&B could not start ({type(self.error).__name__}: {self.error}); training goes on without "
                      f"it, metrics.jsonl in the run directory has every logged step.", file=sys.stderr)
        if self.run is None:
            self.pending.clear()
            return False
        for metrics, step in self.pending:
            self.run.log(metrics, step=step)
        self.pending.clear()
        return True

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.pending.append((metrics, step))
        self._ready(wait=False)

    def finish(self, summary: dict[str, Any]) -> None:
        if not self._ready(wait=True):
            return
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self.run.summary[key] = value
        self.run.finish()
