"""Configuration: dataclasses that load from YAML and round-trip to JSON.

Precedence: built-in defaults < ``--config`` YAML file < command-line flags.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")

# The few-shot protocol's defaults: K examples per class, and the seeds a compare runs (LM-BFF's five).
DEFAULT_SHOTS = 16
DEFAULT_SEEDS = (13, 21, 42, 87, 100)


@dataclass
class TrainConfig:
    """Optimisation settings shared by every trainable method."""

    # Defaults suit small models (MiniLM, SmolLM2) on K=16 splits; LM-BFF used 1e-5 for RoBERTa-large.
    learning_rate: float = 5e-5
    batch_size: int = 8
    eval_batch_size: int = 64
    max_steps: int = 100
    # When set, max_steps is derived from epochs over the training set.
    epochs: float | None = None
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    # Evaluate on dev every N steps and keep the best state (LM-BFF model selection). 0: only at the end.
    eval_every: int = 25
    select_on_dev: bool = True
    # Write a resumable checkpoint every N steps (0: never).
    checkpoint_every: int = 50
    keep_checkpoint: bool = False
    mixed_precision: str = "no"
    # Layer-wise decreasing learning rate ξ in (0, 1]: block k gets lr·ξ^(L-k), embeddings lr·ξ^L.
    layer_decay: float | None = None
    # Self-ensemble (Xu et al. 2020): evaluate/deploy the average of the parameters over the last
    # `ensemble_window` snapshots taken every `ensemble_every` steps ("window"), or an EMA ("ema").
    self_ensemble: str = "none"
    ensemble_window: int = 5
    ensemble_every: int = 10
    ema_decay: float = 0.99
    # Self-distillation weight λ: loss = CE + λ·MSE(student logits, self-ensemble teacher logits).
    self_distill: float = 0.0

    def validate(self) -> None:
        positive = ("learning_rate", "batch_size", "eval_batch_size", "max_steps", "max_length")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"train.epochs must be > 0, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"train.max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"train.layer_decay (ξ) must be in (0, 1], got {self.layer_decay}")
        if self.self_ensemble not in ("none", "window", "ema"):
            raise ConfigError(f"train.self_ensemble must be none, window or ema, got '{self.self_ensemble}'")
        for name in ("ensemble_every", "ensemble_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.self_distill < 0:
            raise ConfigError(f"train.self_distill (λ) must be >= 0, got {self.self_distill}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"train.mixed_precision must be no, fp16 or bf16, got {self.mixed_precision}")


@dataclass
class DataConfig:
    """How to read the task's data beyond its registry entry."""

    data_dir: str | None = None
    # None / "full" / 0: the whole training set; from_dict reads it with parse_shots (YAML, --set, grids).
    shots: int | None = field(default=DEFAULT_SHOTS, metadata={"parse": "shots"})
    empty_text: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    # Column names, or 0-based indices for files without a header row (data.header: false).
    text_columns: list[int | str] | None = None
    label_column: int | str | None = None
    labels: list[str] | None = None
    format: str | None = None
    header: bool | None = None
    # Evaluate on a fixed random subset of at most N test examples (the same subset for every method and
    # seed); for quick runs. None: the whole test split.
    max_test: int | None = None


@dataclass
class IntermediateConfig:
    """Sequential supervised transfer: fine-tune on a related task first, then on the target."""

    task: str = "MNLI"
    shots: int | None = field(default=16, metadata={"parse": "shots"})  # as DataConfig.shots
    data_dir: str | None = None  # default: the target's data dir
    max_steps: int | None = None  # default: the target's train settings
    learning_rate: float | None = None


@dataclass
class RunConfig:
    """One run: one task, model, method and seed."""

    task: str = "SST-2"
    model: str = "minilm-l6"
    method: str = "finetune"
    seed: int = 13
    output: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Method-specific options, validated by the method's own config dataclass.
    method_args: dict[str, Any] = field(default_factory=dict)
    # Optional intermediate task trained first on the same backbone (its head is then discarded).
    intermediate: IntermediateConfig | None = None
    resume: bool = True
    # Write the method's weights to OUTPUT/model/ (adapters, heads); off by default for full fine-tuning.
    save_model: bool = False
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Optional keys added later are left out while unset, so results.json files written before they
        # existed still match this config (compare's per-run cache compares these dicts).
        if d["data"].get("max_test") is None:
            d["data"].pop("max_test", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        return from_dict(cls, d, source)


@dataclass
class CompareConfig:
    """Several methods over several seeds, with per-seed dev selection from a grid."""

    run: RunConfig = field(default_factory=RunConfig)
    methods: list[str] = field(default_factory=lambda: ["finetune"])
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    # Dotted key -> candidate values, e.g. {"train.learning_rate": [1e-5, 2e-5]}; every combination is
    # trained per seed and the one with the best dev metric is reported, as LM-BFF does.
    grid: dict[str, list[Any]] = field(default_factory=dict)
    output: str | None = None


def parse_shots(value: Any, where: str = "--shots") -> int | None:
    """``16`` -> 16; ``full``/``0``/None -> None (whole training set)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("full", "all", "0")) or value == 0:
        return None
    bad = ConfigError(f"{where} must be a positive integer, 0 or 'full', got {value!r}")
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise bad
    try:
        shots = int(value)
    except (TypeError, ValueError):
        raise bad from None
    if shots < 0:
        raise bad
    return shots


# Fields whose values have their own spelling (``shots: full``), named in the field's metadata "parse".
_PARSERS = {"shots": parse_shots}


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if value is None:
        # Only optional fields take null: elsewhere it would skip the type check and fail later, unclearly.
        if tp is Any or (origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)):
            return None
        raise ConfigError(f"{where} is empty (null) but takes {_type_name(tp)}; give a value, or leave the key "
                          "out for its default")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(tp, value, where)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(inner, v, where) for v in _as_list(value, inner)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of keys to values, got {type(value).__name__} {value!r:.40}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        return _coerce_bool(value, where)
    if tp in (int, float, str):
        return _coerce_scalar(tp, value, where)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_union(tp: Any, value: Any, where: str) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    # A value already of one of the types stays as it is: column 0 must not become the column named "0".
    if type(value) in args:
        return value
    last: Exception | None = None
    for a in args:
        try:
            return _coerce(a, value, where)
        except ConfigError as e:
            last = e
    raise last or ConfigError(f"{where}: bad value {value!r}")


def _as_list(value: Any, inner: Any) -> list[Any]:
    """A list as given, or ``"a,b"`` split on commas (integers kept as integers where ``inner`` takes them)."""
    if isinstance(value, list | tuple):
        return list(value)
    if not isinstance(value, str):
        return [value]
    items: list[Any] = [v.strip() for v in value.split(",")]
    if int in typing.get_args(inner):  # `--set data.text_columns=1,2`: indices, as --text-columns 1,2 gives
        items = [int(v) if v.isdigit() else v for v in items]
    return items


def _coerce_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1"):
        return True
    if str(value).lower() in ("false", "no", "0"):
        return False
    raise ConfigError(f"{where} must be true or false, got {value!r}")


def _coerce_scalar(tp: type, value: Any, where: str) -> Any:
    # bool is an int subclass: `true` must not silently become 1 (or 1.0).
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}; write a number, not true/false")
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if isinstance(value, dict | list | tuple):
        # str() would accept anything: `output: {a: 1}` must not become the folder "{'a': 1}".
        raise ConfigError(f"{where} must be a single {tp.__name__}, got a {'mapping' if isinstance(value, dict) else 'list'} "
                          f"{value!r:.40}")
    try:
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}") from None


def from_dict(cls: type[T], d: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad types are one-line errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(names))}")
    parsers = {f.name: f.metadata["parse"] for f in fields(cls) if "parse" in f.metadata}  # type: ignore[arg-type]
    kwargs = {k: _PARSERS[parsers[k]](v, f"{source}.{k}") if k in parsers else _coerce(hints[k], v, f"{source}.{k}")
              for k, v in d.items()}
    return cls(**kwargs)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 scalars. YAML 1.1 (PyYAML's default) reads label words such as
    ``Yes``/``No``/``on`` as booleans, ``013`` as octal 11 and ``1:20`` as 80, and leaves ``1e-5`` a string."""


_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                    list("-+0123456789"))
_Yaml12Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                       r"|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def _int12(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    base = 16 if text.startswith("0x") else 8 if text.startswith("0o") else 10
    return int(text[2:] if base != 10 else text, base)  # "013" is 13, as in YAML 1.2


_Yaml12Loader.add_constructor(_INT, _int12)


def yaml_loads(text: str) -> Any:
    """Parse YAML text with YAML 1.2 scalars (see ``_Yaml12Loader``); safe: no Python objects."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml_loads(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    return data


def check_sections(cls: type, d: dict[str, Any], source: str) -> None:
    """Fail on a section of a config file (a field of ``cls`` that takes a mapping: ``data``, ``train``,
    ``grid``, ...) that is not one, before command-line flags are merged into it."""
    hints = typing.get_type_hints(cls)
    for k, v in d.items():
        tp = hints.get(k)
        if tp is None or v is None or isinstance(v, dict):
            continue
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
        if all(dataclasses.is_dataclass(a) or typing.get_origin(a) is dict for a in args):
            raise ConfigError(f"{source}.{k} must be a mapping of keys to values, got {type(v).__name__} {v!r:.40}")


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``train.learning_rate``-style keys in a nested dict."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"bad key '{key}': expected a dotted key such as train.learning_rate")
    for i, p in enumerate(parts[:-1]):
        if d.get(p) is None:  # absent, or `intermediate: null` in the YAML: a section starts empty
            d[p] = {}
        d = d[p]
        if not isinstance(d, dict):
            section = ".".join(parts[: i + 1])
            raise ConfigError(f"cannot set {key}: {section} is {d!r}, not a section of keys; "
                              f"set {section} itself, or make it a mapping")
    d[parts[-1]] = value
