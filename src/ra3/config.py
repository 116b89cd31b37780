"""Typed stage configs that are at once the CLI flags and the YAML files.

Every stage declares one dataclass whose fields carry their help text (`option(default, "help")`).
`parse_config(Cls, argv)` takes defaults from the dataclass, then from `--config file.yaml`, then from
`--field value` flags, and validates each value against its type. Unknown keys and flags are errors that
name the file (or the flag) and the closest valid name.

Why not HfArgumentParser/TrlParser: importing transformers costs ~1 s before `ra3 evaluate` can start, and
their YAML errors name neither the file nor the nearest valid key. This loader is the ~100 lines they would
save us, with the error messages we want.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ra3.files import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the source, the field and the fix."""


# The bounds a numeric field may declare, and how an error states each.
BOUNDS = {"at_least": ">=", "above": ">", "at_most": "<=", "below": "<"}
_HOLDS = {">=": lambda v, b: v >= b, ">": lambda v, b: v > b, "<=": lambda v, b: v <= b, "<": lambda v, b: v < b}


def option(default: Any, help: str, *, choices: tuple | None = None, **bounds: float) -> Any:
    """A dataclass field with its help string beside it, and optionally its closed set of values or its
    numeric bounds (`at_least`, `above`, `at_most`, `below`; a list field bounds each item), which
    `Config.__post_init__` checks however the config is built."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"option: unknown bound {sorted(unknown)[0]!r} (one of {list(BOUNDS)})")
    meta = {"help": help, "choices": choices, "bounds": {BOUNDS[k]: v for k, v in bounds.items()}}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_bounds(cfg: Any) -> None:
    """Raise ConfigError naming the first field whose value (or list item) breaks a bound it declared;
    None (an optional field left unset) is within every bound."""
    for fld in dataclasses.fields(cfg):
        bounds, value = fld.metadata.get("bounds"), getattr(cfg, fld.name)
        items = value if isinstance(value, list) else [value]
        for op, bound in (bounds or {}).items():
            if any(v is not None and not _HOLDS[op](v, bound) for v in items):
                rule = " and ".join(f"{o} {b}" for o, b in bounds.items())
                raise ConfigError(f"{fld.name} must be {rule}, got {value}")


class Config:
    """Base of every stage config: construction checks the bounds its fields declare. A subclass with
    rules between fields extends `__post_init__` and calls `super().__post_init__()` first."""

    def __post_init__(self) -> None:
        check_bounds(self)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (a YAML value or a CLI string) to the annotated type `tp`, or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X] / X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v.strip() if isinstance(v, str) else v, args[0], where) for v in items if v != ""]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp in (str, Path):
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return tp(value)
    return value


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _unknown(name: str, known: list[str], where: str, what: str) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(sorted(known))})"
    return ConfigError(f"{where}: unknown {what} '{name}'{hint}")


def config_from_dict(cls: type[T], data: dict[str, Any], source: str) -> T:
    """Build `cls` from a mapping; every key must be a field. `source` names the origin in errors."""
    fields = _fields(cls)
    values = {}
    for key, raw in data.items():
        if key not in fields:
            raise _unknown(key, list(fields), source, "key")
        fld, tp = fields[key]
        value = _coerce(raw, tp, f"{source}: {key}")
        choices = fld.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{source}: {key}={value!r} is not one of {list(choices)}")
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing file or a malformed document."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
    return data


def build_parser(cls: type, prog: str, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one `--field` flag per dataclass field (values are validated later)."""
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="YAML file whose keys are the fields below (flags override it)")
    for name, (fld, tp) in _fields(cls).items():
        default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        help_text = fld.metadata.get("help", "")
        if fld.metadata.get("choices"):
            help_text += f" (one of {list(fld.metadata['choices'])})"
        if fld.metadata.get("bounds"):
            help_text += f" ({' and '.join(f'{o} {b}' for o, b in fld.metadata['bounds'].items())})"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                            help=help_text + f" [{getattr(tp, '__name__', tp)}, default: {default}]")
    return parser


def parse_config(cls: type[T], argv: list[str], prog: str = "ra3", description: str = "") -> T:
    """Defaults < `--config f.yaml` < `--field value` flags. Unknown flags or keys raise ConfigError."""
    parser = build_parser(cls, prog, description)
    ns, rest = parser.parse_known_args(argv)
    if rest:
        flag = rest[0].lstrip("-").split("=")[0].replace("-", "_")
        raise _unknown(flag, list(_fields(cls)), prog, "flag")
    data = load_yaml(ns.config) if ns.config else {}
    cli = {k: v for k, v in vars(ns).items() if k != "config"}
    source = f"{ns.config} + command line" if ns.config else "command line"
    return config_from_dict(cls, {**data, **cli}, source)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config (Paths as strings)."""
    def plain(value: Any) -> Any:
        return str(value) if isinstance(value, Path) else [plain(v) for v in value] if isinstance(value, list) else value

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config beside an artifact, atomically, as YAML that `--config` reads back."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
