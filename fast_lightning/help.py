"""`fast-lightning <command> --help`: a command's own options and its config keys with types and defaults.

Types and defaults come from the typed schema (``schema.RootConfig``, the one source of defaults); the one-line
description of a key is the comment next to it in experiments/<group>/default.yaml (where each key is
documented), so nothing here repeats a default or a description. Pure python + omegaconf (no torch): help is
instant.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from pathlib import Path

from fast_lightning import schema

# the config groups each command reads (every command also takes the top-level keys: seed, class_name, ...)
_TRAIN = ("data", "trainer", "logger")
COMMAND_GROUPS = {
    "check-data": ("data",),
    "demo-data": (),
    "train-diffusion": ("data", "diffusion", "sampling", "trainer", "logger"),
    "synthesize": ("data", "diffusion", "sampling", "synthesis", "trainer"),
    "bench-sampling": ("data", "diffusion", "sampling", "synthesis", "trainer"),
    "sheet": ("data", "diffusion", "sampling", "synthesis"),
    "bench-train": ("data", "diffusion", "segmentation", "trainer"),
    "train-seg": ("data", "sampling", "synthesis", "segmentation", "trainer", "logger"),
    "eval-seg": ("data", "trainer"),
    "predict": (),
    "export": (),
}
_COMMENT = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*)(#\s?(?P<doc>.*))?$")


def key_docs(experiments_dir: Path | None = None) -> dict[str, str]:
    """dotted key -> the first line of its comment in experiments/config.yaml and <group>/default.yaml."""
    from fast_lightning.config import EXPERIMENTS_DIR

    root = Path(experiments_dir or EXPERIMENTS_DIR)
    docs: dict[str, str] = {}
    files = [(root / "config.yaml", "")] + [(root / g / "default.yaml", f"{g}.") for g in schema.GROUPS]
    for path, prefix in files:
        if not path.is_file():
            continue
        stack: list[tuple[int, str]] = []
        for line in path.read_text().splitlines():
            m = _COMMENT.match(line)
            if not m:
                continue
            indent = len(m["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m["key"]))
            if m["doc"]:
                docs[prefix + ".".join(k for _, k in stack)] = m["doc"].strip()
    return docs


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " or null"
    if origin in (list, typing.List):
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(tp, "__name__", str(tp))


def _leaves(cls, prefix: str = ""):
    """(dotted key, type name, default) of every scalar/list field of a schema dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        yield f"{prefix}{f.name}", _type_name(tp), default


def _fmt(default) -> str:
    if default is None:
        return "null"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default).replace(" ", "")


def config_help(groups: typing.Iterable[str], docs: dict[str, str] | None = None) -> list[str]:
    docs = key_docs() if docs is None else docs
    fields = {f.name: f for f in dataclasses.fields(schema.RootConfig)}
    hints = typing.get_type_hints(schema.RootConfig)
    top = [(n, _type_name(hints[n]), f.default) for n, f in fields.items() if n not in schema.GROUPS]
    sections = [("top-level keys", top)]
    for g in groups:
        sections.append((f"{g}.* (experiments/{g}/default.yaml)", list(_leaves(hints[g], f"{g}."))))
    rows = [r for _, items in sections for r in items]
    width = max(len(k) for k, _, _ in rows) + 2
    lines = []
    for title, items in sections:
        lines.append(f"\n{title}:")
        for key, tp, default in items:
            doc = docs.get(key, "")
            lines.append(f"  {key:<{width}}{tp} = {_fmt(default)}" + (f"  # {doc}" if doc else ""))
    return lines


def command_help(name: str, module_name: str, summary: str) -> str:
    """The text of ``fast-lightning <name> --help`` (imports the command for its OPTIONS / OPTION_HELP)."""
    module = importlib.import_module(module_name)
    lines = [f"usage: fast-lightning {name} [option=value ...] [config.key=value ...]   (= python -m fast_lightning)",
             "", summary]
    if (module.__doc__ or "").strip():
        lines += ["", module.__doc__.strip()]
    options, option_help = dict(getattr(module, "OPTIONS", {})), dict(getattr(module, "OPTION_HELP", {}))
    if options:
        width = max(len(k) for k in options) + 2
        lines.append("\noptions of this command:")
        for key, default in options.items():
            kind = "bool (true/false/1/0)" if isinstance(default, bool) else type(default).__name__
            shown = _fmt(default) if default != "" else '""'
            text = option_help.get(key, "")
            lines.append(f"  {key:<{width}}{kind} = {shown}" + (f"  # {text}" if text else ""))
    if getattr(module, "TAKES_CONFIG", True):
        lines += config_help(COMMAND_GROUPS.get(name, schema.GROUPS))
        lines.append("\nprint_config=true (or --print-config) prints the resolved config and exits; booleans take "
                     "true/false/1/0.")
    return "\n".join(lines) + "\n"
