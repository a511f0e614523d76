"""Typed configuration: nested dataclasses, TOML files and `key=value` overrides.

Every component owns a `@dataclass(kw_only=True)` config with a docstring under each
field and `__post_init__` checks. This module turns TOML and command-line overrides
into those dataclasses strictly: an unknown key, a value of the wrong type or a value
the component rejects is a `ConfigError` that names the full dotted key, and suggests
the closest known key for a typo. Numbers must be usable: a float must be finite (TOML
accepts `nan` and `inf`), an integer must fit in 64 bits (a 20-digit seed would overflow
inside torch). The resolved config is written back as TOML into every output folder, and
reading that file gives the same config again.
"""

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomli_w
import tomllib

from cluster.durable_files import atomic_write_text

T = TypeVar("T")

RESOLVED_CONFIG_NAME = "config.toml"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ConfigError(ValueError):
    """A configuration a user wrote that cannot be used; the message names the key and the fix."""


def control_characters(text: str) -> list[str]:
    """The control characters in `text` (newline, tab, NUL, escape, ...), each as U+XXXX."""
    return sorted({f"U+{ord(ch):04X}" for ch in text if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0})


def refuse_control_characters(text: str, what: str) -> None:
    """Raise ValueError when a name holds a control character: one in a file, job or script name breaks it.

    A newline in a store or job name reaches a generated sbatch script as a line of its own;
    no quoting survives that, so such names are refused where they are given.
    """
    found = control_characters(str(text))
    if found:
        raise ValueError(
            f"{what} {str(text)!r} holds control characters ({', '.join(found)}); use printable characters only"
        )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown_key(key: str, known: typing.Iterable[str], prefix: str) -> ConfigError:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {_join(prefix, close[0])!r}?" if close else ""
    return ConfigError(f"unknown config key {_join(prefix, key)!r}.{hint} Known keys here: {', '.join(known)}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where no information is lost."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} is a section: write it as a table, not {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key {key!r}: {value!r} fits none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key {key!r} must be one of {_type_name(tp)}, not {value!r}.{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, not {value!r}")
        args = typing.get_args(tp)
        item_type = args[0] if args else Any
        items = [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a table, not {value!r}")
        value_type = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, not {value!r}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise ConfigError(f"config key {key!r} is {value}, outside the 64-bit integer range; use a smaller number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, not {value!r}")
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(f"config key {key!r} is {value}, too large for a float") from None
        if not math.isfinite(number):
            raise ConfigError(f"config key {key!r} must be a finite number, not {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, not {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"config key {key!r} must be a path string, not {value!r}")
        return Path(value)
    raise ConfigError(f"config key {key!r} has an annotation this loader does not know: {tp}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass `cls` from a nested dict, strictly; missing keys take their defaults."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key(key, fields, prefix)
    kwargs = {name: _coerce(value, hints[name], _join(prefix, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        where = f"[{prefix}] " if prefix else ""
        raise ConfigError(f"{where}{error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain TOML-able values; None is left out, since TOML has no null."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {
                f.name: plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None
            }
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def to_toml(config: Any) -> str:
    """The config as TOML text, readable back by `load_config`."""
    return tomli_w.dumps(to_dict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value`; the value is read as a TOML value when it is one (1e-4, true, [1, 2]), else as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (for example model.hidden_size=128)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def override(key: str, value: Any) -> str:
    """`key=value` with the value written as TOML, so that any string (spaces, quotes, emoji) reads back as itself.

    JSON's quoting is not TOML's: `json.dumps` writes a character outside the Basic Multilingual
    Plane as a surrogate pair (`\\ud83d\\ude00`), which TOML refuses, so the path would be mangled.
    """
    return f"{key}={tomli_w.dumps({'value': value}).split('=', 1)[1].strip()}"


def apply_overrides(cls: type, data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Merge `key=value` overrides into a nested dict, checking every key against `cls` first."""
    merged = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        section_cls, node = cls, merged
        for depth, part in enumerate(path):
            prefix = ".".join(path[:depth])
            fields = {f.name: f for f in dataclasses.fields(section_cls)}
            if part not in fields:
                raise _unknown_key(part, fields, prefix)
            if depth == len(path) - 1:
                node[part] = value
                break
            section_cls = typing.get_type_hints(section_cls)[part]
            if not dataclasses.is_dataclass(section_cls):
                raise ConfigError(f"config key {'.'.join(path[: depth + 1])!r} is a value, not a section")
            node = node.setdefault(part, {})
    return merged


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the TOML file at `path` if given, then `overrides`, validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte {error.start} cannot be decoded); save it as UTF-8"
            ) from None
        except OSError as error:
            raise ConfigError(f"config file {path} cannot be read ({error.strerror})") from None
    return from_dict(cls, apply_overrides(cls, data, overrides))


def write_resolved_config(config: Any, folder: str | Path) -> Path:
    """Write the resolved config into an output folder as `config.toml`; return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESOLVED_CONFIG_NAME
    atomic_write_text(path, to_toml(config))
    return path


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, for `--help` and `cmroberta config`."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for statement, following in zip(body, body[1:]):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every leaf key of a config class as (dotted key, default, docstring), for help texts."""
    rows = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = _join(prefix, field.name)
        if dataclasses.is_dataclass(hints[field.name]):
            rows.extend(describe(hints[field.name], key))
            continue
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, docs.get(field.name, "")))
    return rows
