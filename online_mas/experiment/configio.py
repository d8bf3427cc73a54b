"""Read, validate, override and write experiment configs (TOML <-> the dataclasses of ``config``).

A config file states what differs from the embedded default experiment: it is merged over
``ExperimentConfig()`` key by key, then ``--set key=value`` overrides are merged over that, then
the result is validated into the dataclasses. Unknown keys and wrong types raise errors that list
what is allowed. TOML has no null: a field that may be ``None`` is ``None`` when left out.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from online_mas.experiment.config import AdaptSection, ExperimentConfig
from online_mas.experiment.mas_section import MASSection
from streams import StreamConfig

__all__ = ["ConfigError", "config_diff", "config_from_dict", "config_to_dict", "dump_toml",
           "load_config", "parse_override"]

#: Fields of a section that the runner sets itself, with the reason given when a file sets them.
_RESERVED: dict[type, dict[str, str]] = {
    StreamConfig: {
        "seed": "the stream's seed comes from experiment.seeds",
        "labels": "the runner always reads labels for the task loss",
        "flatten": "the model flattens its input itself",
    },
}


#: Keys of older configs whose meaning changed, with what to write instead.
_REPLACED: dict[type, dict[str, str]] = {
    MASSection: {"stable_every": "the slow anchor's interval is now in samples: write stable_samples "
                                 "= stable_every * the stream's batch_size (10 at batch 32 is 320)",
                 "every": "it counted observe() calls; the importance is now estimated on a share of "
                          "the samples: write share = 1/every (every = 4 is share = 0.25 at any batch "
                          "size up to min_estimate = 32 samples; every = 64 is the default 1/64)"},
    AdaptSection: {"stable_every": "the slow anchor's interval is now in samples: write "
                                   "stable_samples = stable_every * the stream's batch_size (25 at "
                                   "batch 32 is 800)",
                   "mas_every": "it counted adaptation steps; the importance is now estimated on a "
                                "share of the samples: write mas_share = 1/mas_every (4 is 0.25 at "
                                "any batch size up to 32)"},
}


#: Sections an experiment of each kind does not read, left out when it is written.
_UNUSED: dict[str, tuple[str, ...]] = {
    "continual": ("adapt", "ssl"),
    "adapt": ("model", "optim", "learner", "ssl"),
    "ssl": ("adapt",),
}


class ConfigError(ValueError):
    """A config file is missing, is not TOML, or holds unknown keys or invalid values."""


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The default experiment, updated by the TOML file at ``path`` and then by ``overrides``.

    Parameters
    ----------
    path
        A TOML file, or ``None`` for the embedded default experiment.
    overrides
        ``"section.key=value"`` strings; the value is read as a TOML value, or as a plain
        string if it is not one (``stream.name=rotated-digits``).

    Returns
    -------
    ExperimentConfig

    Raises
    ------
    ConfigError
        The file is missing or malformed, or a key or value is invalid (the message names it and
        lists what is allowed).

    Examples
    --------
    >>> cfg = load_config(None, ["optim.lr=0.1", "experiment.seeds=[0, 1]"])
    >>> cfg.optim.lr, cfg.experiment.seeds
    (0.1, (0, 1))
    >>> load_config(None, ["optim.lrr=0.1"])  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    online_mas.experiment.configio.ConfigError: unknown key 'optim.lrr';
        allowed in [optim]: name, lr, momentum, weight_decay
    """
    data = config_to_dict(ExperimentConfig())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {err}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {str(p)!r} is not UTF-8 text: {err}") from None
        _merge(data, loaded, "")
    for text in overrides:
        key, value = parse_override(text)
        _merge(data, _nest(key, value), "")
    return config_from_dict(data)


def parse_override(text: str) -> tuple[str, object]:
    """Split ``"a.b=value"`` into the dotted key and a value read as TOML (else a string).

    Examples
    --------
    >>> parse_override("learner.online-mas.lam=3e-3")
    ('learner.online-mas.lam', 0.003)
    >>> parse_override("stream.name=rotated-digits")
    ('stream.name', 'rotated-digits')
    >>> parse_override("lam")
    Traceback (most recent call last):
    ...
    online_mas.experiment.configio.ConfigError: --set expects section.key=value, got 'lam'
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or "." not in key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    raw = raw.strip()
    try:
        value: object = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def config_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a nested dict (as read from TOML) into an :class:`ExperimentConfig`."""
    return typing.cast(ExperimentConfig, _build(ExperimentConfig, data, ""))


def config_to_dict(config: object) -> dict[str, Any]:
    """A dataclass config as a nested dict of TOML values (tuples as lists, ``None`` left out).

    An :class:`ExperimentConfig` leaves out the sections its kind does not read (``[adapt]`` for
    a continual experiment; ``[model]``, ``[optim]`` and ``[learner]`` for an adapt one).

    Examples
    --------
    >>> d = config_to_dict(ExperimentConfig())
    >>> d["optim"], d["learner"]["online-mas"]["lam"]
    ({'name': 'sgd', 'lr': 0.05, 'momentum': 0.9, 'weight_decay': 0.0}, 0.001)
    """
    out: dict[str, Any] = {}
    reserved = _RESERVED.get(type(config), {})
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        if f.name in reserved:
            continue
        value = _plain(getattr(config, f.name))
        if value is not None:
            out[_key(f)] = value
    if isinstance(config, ExperimentConfig):
        for section in _UNUSED[config.experiment.kind]:
            out.pop(section, None)
    return out


def dump_toml(config: ExperimentConfig, *, header: str = "") -> str:
    """Write a config as TOML that :func:`load_config` reads back to an equal config.

    Examples
    --------
    >>> text = dump_toml(ExperimentConfig())
    >>> print(text.split("[stream]")[0].strip())
    [experiment]
    kind = "continual"
    name = "permuted-digits"
    learners = ["finetune", "online-mas", "mas-oracle"]
    seeds = [0]
    >>> config_from_dict(tomllib.loads(text)) == ExperimentConfig()
    True
    """
    lines = [f"# {_comment(line)}" for line in header.splitlines()]
    _dump_table(config_to_dict(config), [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def config_diff(saved: object, current: Mapping[str, Any], *, labels: tuple[str, str] = ("recorded", "now"),
                prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts, one line each.

    NaN equals NaN and ``1 == 1.0``, as the values read back from TOML or JSON.

    Examples
    --------
    >>> config_diff({"optim": {"lr": 0.05, "momentum": 0.9}}, {"optim": {"lr": 0.1, "momentum": 0.9}})
    ['optim.lr: recorded 0.05, now 0.1']
    """
    if not isinstance(saved, Mapping):
        return [f"{prefix or 'config'}: {labels[0]} {saved!r}, {labels[1]} {current!r}"]
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(key), current.get(key)
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_diff(a, b, labels=labels, prefix=path)
        elif not _same(a, b):
            out.append(f"{path}: {labels[0]} {a!r}, {labels[1]} {b!r}")
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ------------------------------------------------------------------------------------ internals


def _key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _merge(base: dict[str, Any], new: Mapping[str, Any], where: str) -> None:
    """Merge ``new`` into ``base`` in place; tables merge key by key, values replace."""
    for key, value in new.items():
        path = f"{where}.{key}" if where else key
        if isinstance(value, Mapping) and isinstance(base.get(key), dict) and not _inline(path):
            _merge(base[key], value, path)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def _inline(path: str) -> bool:
    """Tables that are values (a whole dict replaces the old one)."""
    return path.endswith("detector_args") or path == "model.kwargs"


def _nest(key: str, value: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def _build(cls: type, data: object, where: str) -> object:
    section = f"[{where}]" if where else "the top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table (section), got {data!r}")
    fields = {_key(f): f for f in dataclasses.fields(cls)}
    reserved = _RESERVED.get(cls, {})
    replaced = _REPLACED.get(cls, {})
    for key in data:
        if key in reserved:
            raise ConfigError(f"{_join(where, key)} cannot be set: {reserved[key]}")
        if key in replaced:
            raise ConfigError(f"{_join(where, key)} is no longer read: {replaced[key]}")
    unknown = [k for k in data if k not in fields]
    if unknown:
        allowed = ", ".join(k for k in fields if k not in reserved)
        names = ", ".join(repr(_join(where, k)) for k in unknown)
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {names}; "
                          f"allowed in {section}: {allowed}")
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _coerce(hints[f.name], data[k], _join(where, k))
              for k, f in fields.items() if k in data}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{section}: {err}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(hint: Any, value: object, path: str) -> object:
    """Check ``value`` against the type ``hint``; convert lists to tuples and ints to floats."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, path)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in args if a is not type(None)]
        for member in members:  # an exact match first: 5 stays an int in int | float
            if _exact(member, value):
                return value
        for member in members:
            try:
                return _coerce(member, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path} must be {_describe(hint)}, got {_show(value)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} must be {_describe(hint)}, got {_show(value)}")
        item = args[0]
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be {_describe(hint)}, got {_show(value)}")
        return {str(k): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and _exact(hint, value):
        return value
    raise ConfigError(f"{path} must be {_describe(hint)}, got {_show(value)}")


def _exact(hint: Any, value: object) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return type(value) is hint
    return hint is str and isinstance(value, str)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return f"a table of {_describe(args[1])}"
    names = {int: "an int", float: "a number", str: "a string", bool: "a boolean (true/false)"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _show(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _dump_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) or _inline(".".join([*path, k]))}
    tables = {k: v for k, v in table.items() if k not in scalars}
    if path and (scalars or not tables):
        lines.extend(["", f"[{'.'.join(_toml_key(k) for k in path)}]"])
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, [*path, key], lines)



def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as TOML")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: UTF-8 as it is, control characters escaped (not JSON's surrogates).

    Examples
    --------
    >>> print(_toml_string('my run ü 😀 "x"\\t'))
    "my run ü 😀 \\"x\\"\\t"
    """
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # a lone surrogate (undecodable bytes in a path)
            raise ConfigError(f"cannot write {text!r} as TOML: it holds a lone surrogate "
                             f"U+{ord(ch):04X}, which is not a Unicode character")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _comment(text: str) -> str:
    """``text`` fit for a TOML comment: control characters and lone surrogates shown as escapes."""
    return "".join(f"\\u{ord(ch):04x}" if (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F
                   or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def _toml_key(key: object) -> str:
    text = str(key)
    if text and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in text):
        return text
    return _toml_string(text)
