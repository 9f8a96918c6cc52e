"""The command line before Hydra parses it: flags may stand anywhere, and unknown options are named.

Hydra's parser takes its flags and one run of overrides; `python ablate/run.py norm=rms,ln -m
train.max_steps=60` (an override after `-m`) fails there with "unrecognized arguments". ablate moves
every flag, with its value, in front of the overrides, keeping the order of each, so a flag works
wherever it is typed.
"""
from __future__ import annotations

import sys

from ablate.config.schema import CONF
from ablate.config.validate import is_group, option_problem


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
        if arg.startswith("-") or not sep or "(" in value or group.startswith("hydra/") or not is_group(group):
            continue  # hydra/* groups also come from installed plugins: Hydra checks those
        for option in value.split(","):
            message = option_problem(group, option)
            if message is not None:
                print(f"ablate: refused before training: {message} Nothing was trained.", file=sys.stderr)
                sys.exit(2)


def default_options() -> dict[str, str]:
    """group -> option of conf/config.yaml's defaults list."""
    import yaml

    entries = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return {k: str(v) for entry in entries if isinstance(entry, dict) for k, v in entry.items()
            if not k.startswith("override")}


def refuse_foreign_knobs(argv: list[str]) -> None:
    """`axis.key=value` where the chosen option of `axis` has no setting `key` (`tokenizer=byte
    tokenizer.vocab_size=300`): one paragraph naming the options that have it, instead of Hydra's
    composition error. The chosen option is the command line's `axis=option` (each of a comma list),
    else conf/config.yaml's default; with a preset (+experiment=...) the default is left to Hydra."""
    import dataclasses

    from components.registry import AXES, config_of, options

    chosen = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and key.lstrip("+~") in AXES and "(" not in value:
            chosen[key.lstrip("+~")] = value.split(",")
    presets = any(arg.lstrip("+").startswith(("experiment=", "lecture=", "sweep=")) for arg in argv)
    defaults = {} if presets else default_options()
    for arg in argv:
        key, sep, value = arg.partition("=")
        axis_name, dot, knob_name = key.lstrip("+~").partition(".")
        if not sep or not dot or "." in knob_name or axis_name not in AXES:
            continue
        if knob_name == "name":  # `norm.name=ln` chooses the option as `norm=ln` does: the same one check
            refuse_unknown_options([f"{axis_name}={value}"])
            continue
        names = chosen.get(axis_name) or ([defaults[axis_name]] if axis_name in defaults else [])
        for name in names:
            if name not in options(axis_name):
                continue
            own = [f.name for f in dataclasses.fields(config_of(axis_name, name)) if f.name != "name"]
            if knob_name in own:
                continue
            having = [o for o in options(axis_name)
                      if knob_name in {f.name for f in dataclasses.fields(config_of(axis_name, o))}]
            print(f"ablate: refused before training: {axis_name}.{knob_name}={value} is not a setting of "
                  f"{axis_name}={name} (its settings: {', '.join(f'{axis_name}.{k}' for k in own) or 'none'}). "
                  + (f"Options of `{axis_name}` that have it: {', '.join(having)}; choose one of them "
                     f"({axis_name}={having[0]}), or drop {axis_name}.{knob_name}." if having else
                     f"No option of `{axis_name}` has it: drop it.{did_you_mean(axis_name, knob_name, own)}")
                  + " Nothing was trained.", file=sys.stderr)
            sys.exit(2)


def did_you_mean(axis_name: str, name: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean {axis_name}.{close[0]}?" if close else ""
