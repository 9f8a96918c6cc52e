"""The command line before Hydra parses it: flags may stand anywhere, and unknown options are named.

Hydra's parser takes its flags and one run of overrides; `python ablate/run.py norm=rms,ln -m
train.max_steps=60` (an override after `-m`) fails there with "unrecognized arguments". ablate moves
every flag, with its value, in front of the overrides, keeping the order of each, so a flag works
wherever it is typed.
"""
from __future__ import annotations

import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def _hydra_flags() -> dict[str, object]:
    """Hydra's flags by option string (`-m`, `--multirun`, `--cfg`, ...) -> their argparse action."""
    from hydra._internal.utils import get_args_parser

    return {option: action for action in get_args_parser()._actions for option in action.option_strings}


def flags_first(argv: list[str]) -> list[str]:
    """argv with Hydra's flags (and the value each takes) before the overrides; each keeps its order.

    A flag's value is the next word for flags that take one (`--cfg job`, `-cp DIR`), the next word
    only if it is one of the flag's choices for flags whose value is optional (`--info defaults`).
    Words starting with `-` that Hydra does not know stay flags, so Hydra still reports them.
    """
    known = _hydra_flags()
    flags: list[str] = []
    overrides: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if not word.startswith("-") or word == "-":
            overrides.append(word)
            continue
        flags.append(word)
        action = known.get(word)
        if action is None or "=" in word:  # unknown (Hydra reports it), or --flag=value in one word
            continue
        if action.nargs is None and index < len(argv):  # exactly one value
            flags.append(argv[index])
            index += 1
        elif action.nargs == "?" and index < len(argv) and action.choices and argv[index] in action.choices:
            flags.append(argv[index])
            index += 1
    return flags + overrides


def refuse_unknown_options(argv: list[str]) -> None:
    """`group=option` naming no conf/group/option.yaml: one clear line instead of Hydra's search-path dump.

    Comma lists (multirun sweeps) are checked item by item; sweep functions (range(...), choice(...))
    are left to Hydra.
    """
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        if arg.startswith("-") or not sep or "(" in value or group.startswith("hydra/") or not (CONF / group).is_dir():
            continue  # hydra/* groups also come from installed plugins: Hydra checks those
        valid = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        for option in value.split(","):
            if option not in valid:
                print(f"ablate: refused before training: {group}={option} is not an option of the config "
                      f"group `{group}`. Valid choices: {', '.join(valid)} (one YAML file each in "
                      f"conf/{group}/). Nothing was trained.", file=sys.stderr)
                sys.exit(2)
