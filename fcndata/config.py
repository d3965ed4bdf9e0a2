"""Typed, frozen configuration and a strict YAML loader.

A recipe in ``pipelines/`` is a YAML file whose top-level sections map to the
dataclasses of :mod:`fcndata.sections` and, for ``augment:``, to the
:class:`fcndata.augment.Augment` stage itself; :class:`Config` holds them. Optional sections (``patches``, ``augment``, ``sampling``) are
``None`` when absent, and ``build_pipeline`` then skips that stage. Unknown keys are
errors that name the file, the section, the valid keys and the closest match::

    pipelines/x.yaml: unknown key 'stide' in section 'patches'; did you mean 'stride'?

Every command line accepts ``--set section.key=value`` (the value is parsed as YAML).

Example:
  >>> cfg = load_config_text("data: {source: shapes, num_classes: 3}\\npatches: {patch_size: 32}")
  >>> cfg.patches.patch_size, cfg.patches.stride, cfg.augment is None
  ((32, 32), (16, 16), True)
  >>> load_config_text("patches: {stide: 4}", name="x.yaml")
  Traceback (most recent call last):
  ...
  fcndata.sections.ConfigError: x.yaml: unknown key 'stide' in section 'patches'; did you mean 'stride'? Valid keys: ...
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from fcndata.augment import Augment
from fcndata.sections import (  # the section classes are part of this module's interface
    BatchingConfig,
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    PatchesConfig,
    PredictConfig,
    SamplingConfig,
    ServiceConfig,
    TrainConfig,
)


@dataclass(frozen=True)
class Config:
    """A whole recipe. ``source`` is the file it was loaded from (for messages and paths)."""

    data: DataConfig = field(default_factory=DataConfig)
    patches: Optional[PatchesConfig] = None
    augment: Optional[Augment] = None  # the stage is the section (fcndata.augment)
    sampling: Optional[SamplingConfig] = None
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    service: Optional[ServiceConfig] = None
    source: Optional[str] = field(default=None, compare=False)
    #: the sections the recipe wrote (the rest are defaults); None when built in Python
    given: Optional[frozenset] = field(default=None, compare=False)

    def __post_init__(self):
        # Checks that need two sections.
        k = self.data.num_classes
        weights = self.sampling.class_weights if self.sampling is not None else None
        if isinstance(weights, tuple) and len(weights) != k:
            raise ConfigError(
                f"sampling.class_weights needs one weight per class, num_classes={k}. Received: {len(weights)} weights"
            )
        alphas = [("loss.alpha", self.loss.alpha, self.loss.name)] + [
            (f"loss.terms[{i}].alpha", t.get("alpha"), t.get("name")) for i, t in enumerate(self.loss.terms or ())
        ]
        for name, alpha, loss in alphas:
            if isinstance(alpha, (list, tuple)) and loss in ("focal", "sigmoid_focal", "sum") and len(alpha) != k:
                raise ConfigError(f"{name} needs one value per class, num_classes={k}. Received: {name}={list(alpha)}")
        probs = self.patches.class_probabilities if self.patches is not None else None
        if isinstance(probs, tuple) and len(probs) != k:
            raise ConfigError(
                f"patches.class_probabilities needs one value per class, num_classes={k}. Received: {len(probs)} values"
            )

    def replace(self, **sections) -> "Config":
        """A copy with whole sections replaced (``cfg.replace(batching=...)``)."""
        return dataclasses.replace(self, **sections)


SECTIONS = {f.name: f for f in dataclasses.fields(Config) if f.name not in ("source", "given")}


# ---------------------------------------------------------------------------- loading


def _is_optional(tp) -> bool:
    return type(None) in typing.get_args(tp)


def _coerce(value, tp, where: str, name: str):
    """Checks ``value`` against the type hint ``tp`` (lists become tuples)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and _is_optional(tp):
            return None
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where, name)
            except ConfigError:
                continue  # try the next member of the union
        names = " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in typing.get_args(tp))
        raise ConfigError(f"{where}: key '{name}' must be {names}. Received: {name}={value!r}")
    if origin is tuple:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            # a scalar where a tuple is expected: let __post_init__ normalise (e.g. patch_size: 64)
            args = typing.get_args(tp)
            if args and args[0] is int and isinstance(value, int):
                return value
            raise ConfigError(f"{where}: key '{name}' must be a list. Received: {name}={value!r}")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key '{name}' must be a list. Received: {name}={value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where, name) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: key '{name}' must be a list of {len(args)} values. Received: {name}={value!r}")
        return tuple(_coerce(v, a, where, name) for v, a in zip(value, args))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: key '{name}' must be a number. Received: {name}={value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: key '{name}' must be an integer. Received: {name}={value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: key '{name}' must be true or false. Received: {name}={value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: key '{name}' must be a string. Received: {name}={value!r}")
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: key '{name}' must be a mapping. Received: {name}={value!r}")
    return value


def _unknown_key(where: str, key: str, section: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    return ConfigError(f"{where}: unknown key '{key}' in section '{section}'{hint} Valid keys: {', '.join(valid)}")


def _build_section(cls, raw, where: str, section: str, data=None):
    """One section from its raw mapping.

    A field marked ``metadata={"from_data": name}`` is not a key of the section: it takes
    ``data.<name>`` (a stage's ``ignore_label``). A field marked ``{"default_from_data": name}``
    takes ``data.<name>`` when the section does not set it (a stage's ``seed``). A stage's own
    ValueError / TypeError already names the key; it is re-raised naming the file.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: section '{section}' must be a mapping of keys to values. Received: {section}={raw!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    valid = [f.name for f in fields if "from_data" not in f.metadata]
    kwargs = {}
    for key, value in raw.items():
        if key not in valid:
            raise _unknown_key(where, str(key), section, valid)
        kwargs[key] = _coerce(value, hints[key], f"{where}: section '{section}'", key)
    if data is not None:
        kwargs.update({f.name: getattr(data, f.metadata["from_data"]) for f in fields if "from_data" in f.metadata})
        kwargs.update({f.name: getattr(data, f.metadata["default_from_data"]) for f in fields
                       if "default_from_data" in f.metadata and f.name not in raw})
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (ValueError, TypeError) as e:  # a stage's own check: its message names the key
        raise ConfigError(f"{where}: {e}") from None


def config_from_dict(raw: dict | None, name: str = "<config>", given=None) -> Config:
    """Builds a :class:`Config` from a plain dict (as parsed from YAML).

    ``given``: the sections the recipe itself wrote (``Config.given``); default: the keys of ``raw``.

    Raises:
      ConfigError: unknown section or key, wrong type or invalid value; the message
        names ``name``, the section and the key.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: a recipe must be a mapping of sections. Received: {type(raw).__name__}")
    kwargs = {}
    # data first: other sections take values from it (seed, ignore_label, root)
    for section, value in sorted(raw.items(), key=lambda item: item[0] != "data"):
        if section not in SECTIONS:
            close = difflib.get_close_matches(str(section), list(SECTIONS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            raise ConfigError(f"{name}: unknown section '{section}'{hint} Valid sections: {', '.join(SECTIONS)}")
        cls = typing.get_type_hints(Config)[section]
        if _is_optional(cls):
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
        kwargs[section] = _build_section(cls, value, name, section, kwargs.get("data") or DataConfig())
    augment, root = kwargs.get("augment"), (kwargs.get("data") or DataConfig()).root
    if augment is not None and isinstance(augment.albumentations, str) and root is not None:
        if not Path(augment.albumentations).is_absolute():  # relative to the recipe's data.root
            kwargs["augment"] = dataclasses.replace(augment, albumentations=str(Path(root) / augment.albumentations))
    try:
        return Config(**kwargs, source=name, given=frozenset(kwargs if given is None else given))
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], name: str = "--set") -> dict:
    """Applies ``section.key=value`` overrides (value parsed as YAML) to a raw dict.

    >>> apply_overrides({"train": {"epochs": 5}}, ["train.epochs=2", "patches.patch_size=[8, 8]"])
    {'train': {'epochs': 2}, 'patches': {'patch_size': [8, 8]}}
    """
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in (raw or {}).items()}
    for item in overrides or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"{name}: overrides look like section.key=value, e.g. train.epochs=5. Received: {item!r}")
        path, text = item.split("=", 1)
        section, key = path.strip().split(".", 1)
        where = f"{name} {item}"
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, list(SECTIONS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            raise ConfigError(f"{where}: unknown section '{section}'{hint} Valid sections: {', '.join(SECTIONS)}")
        cls = typing.get_type_hints(Config)[section]
        if _is_optional(cls):
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
        valid = [f.name for f in dataclasses.fields(cls)]
        if key not in valid:
            raise _unknown_key(where, key, section, valid)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: the value is not valid YAML ({e}). Quote strings with ':' or '#'.") from None
        current = raw.get(section)
        if current is None:
            current = {}
        raw[section] = {**current, key: value}
    return raw


def load_config_text(text: str, overrides=(), name: str = "<string>") -> Config:
    """Parses YAML text into a :class:`Config` (see :func:`load_config`)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: not valid YAML ({e}). Fix the syntax at the position shown.") from None
    # Config.given: the file's own sections, not those an override added
    given = frozenset(raw) if isinstance(raw, dict) else frozenset()
    return config_from_dict(apply_overrides(raw or {}, overrides), name=name, given=given)


def load_config(path: str | Path | None = None, overrides=()) -> Config:
    """Loads a recipe with ``yaml.safe_load`` and applies ``--set`` overrides.

    Args:
      path: a YAML recipe; None gives the defaults.
      overrides: ``section.key=value`` strings.

    Raises:
      ConfigError: the file is missing or invalid; the message names it.
    """
    if path is None:
        return config_from_dict(apply_overrides({}, overrides), name="<defaults>")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found. Pass an existing YAML file, e.g. pipelines/shapes.yaml.")
    cfg = load_config_text(path.read_text(), overrides, name=str(path))
    data = cfg.data if cfg.data.root is not None else dataclasses.replace(cfg.data, root=str(path.parent.resolve()))
    return cfg.replace(data=data)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data (tuples become lists; absent sections omitted)."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        if section is not None:
            out[name] = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)
                         if "from_data" not in f.metadata}  # data's own values are written under data:
    return out


def dump_config(cfg: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (next to every run's outputs)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_config_arguments(parser, default: str | None = None) -> None:
    """Adds ``--config`` and ``--set`` to an argparse parser (every command has them)."""
    parser.add_argument("--config", default=default, help="YAML recipe (see pipelines/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML syntax), repeatable: --set train.epochs=2",
    )
