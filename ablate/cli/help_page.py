"""The generated parts of `python ablate/run.py --help` (conf/hydra/help/ablate.yaml holds the prose).

The page's template calls the OmegaConf resolver `ablate_help` registered here; each section is built
from conf/ and the composed config at the time `--help` runs, so a new option, group, preset or sweep
appears on the page without anyone editing it, and `--help` after other overrides
(`+experiment=llama --help`) shows that config's choices and values.

Kinds of conf/ folder, told apart by their files rather than by a list of names:
- a config group (`norm`, `model`, ...): its options fill one node of the config, `GROUP=OPTION`;
- a setup (`experiment`, `lecture`, `sweep`, ...): its options are `# @package _global_` files
  that set several groups at once, applied with `+GROUP=NAME`; a setup that sets
  `hydra.sweeper.params` is a sweep and needs `-m`.
Internal nodes stay off the page: `schema` (the typed config, not a folder), folders below a group
(`sweep/wandb`: W&B's files, not Hydra options) and Hydra's own groups (`--hydra-help` lists them).
"""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from ablate.config.schema import CONF, choices

INDENT = "  "


def options(group: str) -> list[str]:
    return choices(group, CONF)  # this module's CONF: a test points it at a copy of conf/


def _width() -> int:
    return max(80, min(120, shutil.get_terminal_size((100, 24)).columns))


def _summary_line(path: Path) -> str:
    """The first line of the option file's leading comment (after Hydra's `@package` line): what the file
    says it is; a sweep's `Question: ` label is dropped."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text.removeprefix("Question: ")
    return ""


def _without_common_prefix(texts: list[str]) -> list[str]:
    """Drop the words every text starts with ("The lecture's path from GPT-2 to LLaMA, step 1: ...")."""
    if len(texts) < 2:
        return texts
    words = [t.split(" ") for t in texts]
    shared = 0
    while all(len(w) > shared + 1 and w[shared] == words[0][shared] for w in words):
        shared += 1
    return [" ".join(w[shared:]) for w in words]


def is_setup(group: str) -> bool:
    """Options that set several groups at once (`# @package _global_`), applied with `+GROUP=NAME`."""
    files = sorted((CONF / group).glob("*.yaml"))
    return bool(files) and all(f.read_text(encoding="utf-8").lstrip().startswith("# @package _global_")
                               for f in files)


def is_sweep(path: Path) -> bool:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return bool(((data.get("hydra") or {}).get("sweeper") or {}).get("params"))


def setup_groups() -> list[str]:
    return sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra" and is_setup(p.name))


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value if value and value.isprintable() and " " not in value and "," not in value else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def knobs(prefix: str, node: DictConfig) -> list[str]:
    """`prefix.key=value` for every setting of a node but its option `name`, values as now composed."""
    out = []
    for key in node:
        if key == "name":
            continue
        try:
            value = node[key]
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001  (a mandatory ??? or an interpolation only a job can resolve)
            value = OmegaConf.to_container(node, resolve=False).get(key)
        out.append(f"{prefix}.{key}={_value(value)}")
    return out


def _wrapped(first: str, words: list[str], column: int) -> list[str]:
    """`first` padded to `column`, then the words wrapped so continuation lines start at `column`."""
    text = " ".join(words)
    body = textwrap.wrap(text, width=_width() - column, break_on_hyphens=False, break_long_words=False) or [""]
    lines = [INDENT + first.ljust(column - len(INDENT)) + body[0]]
    lines += [" " * column + rest for rest in body[1:]]
    return lines


def groups_section(root: DictConfig) -> str:
    """One block per config group in the defaults list's order: its options, the current one in
    brackets, then its knobs with their current values."""
    choices = root.hydra.runtime.choices
    column = len(INDENT) + max(len(k) for k in root) + 2
    lines: list[str] = []
    for group in root:
        if group == "hydra" or not (CONF / group).is_dir() or is_setup(group):
            continue
        current = choices.get(group)
        names = [f"[{o}]" if o == current else o for o in options(group)]
        lines += _wrapped(group, names, column)
        settings = knobs(group, root[group])
        if settings:
            lines += _wrapped("", settings, column + 2)
    return "\n".join(lines)


def settings_section(root: DictConfig) -> str:
    """Top-level nodes that are not config groups (`train`, ...): every key with its current value."""
    column = len(INDENT) + max(len(k) for k in root) + 2
    lines: list[str] = []
    for key in root:
        if key == "hydra" or (CONF / key).is_dir() or not isinstance(root[key], DictConfig):
            continue
        lines += _wrapped(key, knobs(key, root[key]), column)
    return "\n".join(lines)


def setups_section() -> str:
    """Every setup group: how to apply it and one line per option from its file's own comment."""
    width = _width()
    lines: list[str] = []
    for group in setup_groups():
        files = sorted((CONF / group).glob("*.yaml"))
        sweep = all(is_sweep(f) for f in files)
        usage = f"-m +{group}=NAME" if sweep else f"+{group}=NAME"
        lines.append(f"{INDENT}{usage}" + ("   (a sweep: needs -m; grid and seeds in the file)" if sweep else ""))
        column = len(INDENT) * 2 + max(len(f.stem) for f in files) + 2
        for f, text in zip(files, _without_common_prefix([_summary_line(f) for f in files])):
            room = width - column
            if len(text) > room:
                text = text[: room - 1].rstrip() + "…"
            lines.append((INDENT * 2 + f.stem).ljust(column) + text)
    return "\n".join(lines)


def help_section(section: str, *, _root_: DictConfig) -> str:
    """The OmegaConf resolver `${ablate_help:SECTION}` of the help template. `$` is doubled because
    Hydra passes the page through string.Template."""
    builders = {"groups": lambda: groups_section(_root_), "settings": lambda: settings_section(_root_),
                "setups": setups_section}
    if section not in builders:
        raise ValueError(f"ablate_help: unknown section {section!r}; valid: {', '.join(builders)}")
    return builders[section]().replace("$", "$$")


def register() -> None:
    if not OmegaConf.has_resolver("ablate_help"):
        OmegaConf.register_new_resolver("ablate_help", help_section)
