"""Typed configuration tree, YAML recipes and ``key=value`` overrides.

One dataclass tree describes a run: the model (backbone, temporal module, scorer and psi), the
objective, the data and the training loop. ``load_config(path, overrides)`` reads a YAML recipe,
applies dotted overrides (``train.epochs=2``) and validates every key and type, naming the offending
key in the error.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration a user wrote is invalid (unknown key, wrong type, bad value)."""


@dataclass
class BackboneConfig:
    """CLIP towers built with open_clip."""

    arch: str = "ViT-B-32"  # any open_clip architecture name, or "tiny"
    weights: str | None = None  # local file: OpenAI CLIP .pt (JIT or state dict) or open_clip state dict
    quick_gelu: bool = True  # OpenAI CLIP uses QuickGELU
    max_words: int = 32  # token length including start and end-of-text tokens
    grad_checkpointing: bool = False
    arch_cfg: dict | None = None  # explicit open_clip model config (embed_dim, vision_cfg, text_cfg); wins over arch


@dataclass
class TemporalConfig:
    kind: str = "seqTransf"  # "seqTransf" | "meanP"
    layers: int = 4
    init_from_text: bool = True  # initialize from the first text blocks and text positional table


@dataclass
class PsiConfig:
    """The increment module psi (docs/architecture.md, "psi, the increment module")."""

    heads: int = 1
    layers: int = 1
    dropout: float = 0.3
    log_sigma_head: bool = False  # the release computes log sigma but never uses it
    stochastic: bool = False  # sample Delta ~ N(mu, sigma^2) in training (needs log_sigma_head)


@dataclass
class ScorerConfig:
    use_delta: bool = True  # False: the baseline without Delta
    pooling: str = "text"  # "text" (text-conditioned softmax pooling) | "mean"
    pool_temperature: float = 3.0
    query: str = "gap"  # "gap": eta*(vbar - t) | "text": plain t_i (Table 5 ablation)
    eta: float = 1.0  # +1 or -1
    context: str = "frames"  # "frames" of the video | "words" of the text
    side: str = "text"  # corrected side: "text" (t + Delta) | "video" (vhat + Delta)
    delta_norm: float | None = None  # normalized Delta (Table 6): Delta <- r Delta / ||Delta|| with r = delta_norm
    psi: PsiConfig = field(default_factory=PsiConfig)


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    # "release": padded frame slots are encoded (as zero images), attended to by psi and averaged into vbar,
    # as the official release computes them; "none": padding is masked everywhere. Set from
    # ``release.padded_frames`` by load_config; recorded in checkpoints.
    compat: str = "none"


@dataclass
class LossConfig:
    """Weights of the objective terms (docs/architecture.md, "The objective")."""

    beta: float = 1e-4
    ib_anchor: str = "video"  # "video" | "text"
    ib_convention: str = "sum"  # "sum" over D (beta 1e-4) | "mean" over D (the paper's beta 0.07)
    ib_prior_sigma: float = 1.0
    lambda_eps: float = 0.01
    eps_truncate: float = 0.5
    lambda_dir: float = 0.01
    alpha: float = 2.0
    direction_strict: bool = False
    lambda_gs: float = 0.0  # seed version's gradient supervision (0 = off)
    gs_eps: float = 1.0
    multi_positive: bool = True  # False: the diagonal only (the release; set by release.diagonal_positives)
    radius_plain_zero: bool = False  # truncated radius term as the plain number 0 (release.plain_radius)
    use_ib: bool = True
    use_radius: bool = True
    use_direction: bool = True


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | msrvtt | msvd | didemo | activitynet | jsonl
    annotations: str | None = None  # annotation folder (benchmarks) or .jsonl file
    videos: str | None = None  # folder of video files
    synthetic_videos: int = 1000
    synthetic_seed: int = 0
    synthetic_options: dict = field(default_factory=dict)  # generator options (test_fraction, size, fps, ...)
    framerate: float = 1.0
    max_frames: int = 12
    frame_store: str | None = None  # path of a pre-decoded frame store ("auto": next to the data)
    decoder: str = "pyav"
    augment: bool = True
    noise_fraction: float = 0.0  # noisy correspondence: fraction of training captions replaced
    noise_seed: int = 0
    bad_input_threshold: float = 0.01
    workers: int = 2
    options: dict = field(default_factory=dict)  # dataset-specific reader options


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    epochs: float = 5.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 128  # global batch over all ranks
    lr: float = 1e-4  # new modules (temporal, psi)
    clip_lr_coef: float = 1e-3  # CLIP lr = lr * coef (1e-7 in the paper)
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    logit_scale_max: float = 100.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast on CUDA only)
    seed: int = 42
    log_every: int = 10
    eval_every: int | None = None  # steps between validations (None: once per epoch)
    save_every: int | None = None  # steps between checkpoints (None: at each validation)
    resume: bool = False
    device: str = "auto"
    freeze_backbone: bool = False
    features: str | None = None  # cached frozen-backbone features (data features) for fast loops
    diagnostics: bool = False  # tension diagnostics at each logged step
    geometry: bool = True  # modality-gap measures (geo_*) of the validation split at each validation
    eval_batch_size: int = 64
    tensorboard: bool = True
    threads: int = 0  # torch intra-op threads (0: from the free cores, gare.threads; GARE_THREADS overrides)


@dataclass
class EvalConfig:
    split: str = "val"
    two_stage_k: int | None = None  # rerank the top K of the plain cosine ranking with GARE
    dsl: bool = False
    qb_norm: bool = False


RELEASE_SWITCHES = ("optimizer", "param_groups", "freeze_conv1", "fp16_weights", "gather_grad", "padded_frames",
                    "diagonal_positives", "plain_radius", "augment")


@dataclass
class ReleaseConfig:
    """The official release's training behaviours (docs/method-notes.md, table "release vs default").

    Every switch is ``null`` by default: it then follows the top-level ``compat`` key (``release``: on,
    ``none``: off). ``load_config`` resolves them to true/false.
    """

    optimizer: bool | None = None  # BertAdam (no bias correction) with its in-optimizer warm-up/cosine schedule
    param_groups: bool | None = None  # no decay for names containing 'bias'/'LayerNorm.*'; lr x coef for "clip."
    freeze_conv1: bool | None = None  # CLIP's patch embedding (visual.conv1) not trained
    fp16_weights: bool | None = None  # CLIP Linear/Conv/attention/projection weights in fp16 (CUDA only)
    fp16_weights_anywhere: bool = False  # force the fp16 weights on any device (tests); never set by compat
    gather_grad: bool | None = None  # all-gather backward returns the local slice only (towers get 1/W)
    padded_frames: bool | None = None  # padded slots encoded, attended by psi and averaged into vbar
    diagonal_positives: bool | None = None  # InfoNCE positives = diagonal only (repeated videos are negatives)
    plain_radius: bool | None = None  # the truncated radius term is the plain number 0 (no graph)
    augment: bool | None = None  # RandAugment rand-m7-n4-mstd0.5-inc1 once per clip (timm) instead of ours
    schedule_epochs: float = 5.0  # the release's schedule length T in epochs, whatever train.epochs is


@dataclass
class Config:
    name: str = "default"
    compat: str = "none"  # "release": every switch of the `release` section defaults to on
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_CHOICES = {
    "compat": {"none", "release"},
    "model.compat": {"none", "release"},
    "model.temporal.kind": {"seqTransf", "meanP"},
    "model.scorer.pooling": {"text", "mean"},
    "model.scorer.query": {"gap", "text"},
    "model.scorer.context": {"frames", "words"},
    "model.scorer.side": {"text", "video"},
    "loss.ib_anchor": {"video", "text"},
    "loss.ib_convention": {"sum", "mean"},
    "train.precision": {"auto", "fp32", "bf16", "fp16"},
}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently coerce) ``value`` against the annotated type ``tp``; error names ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__} {value!r}")
        return _from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int or tp is float:
        return _number(value, tp, key)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key '{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    return value


def _number(value: Any, tp: type, key: str) -> int | float:
    """``value`` as an int or a float (numbers, integral floats for ints, numeric strings; never a bool)."""
    if not isinstance(value, bool):
        if isinstance(value, int) or (tp is float and isinstance(value, float)):
            return tp(value)
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    raise ConfigError(f"config key '{key}' must be {'an integer' if tp is int else 'a number'}, got {value!r}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            close = difflib.get_close_matches(k, sorted(names), n=1)
            hint = f" (did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}; valid keys here: {', '.join(sorted(names))}")
        kwargs[k] = _coerce(v, hints[k], key)
    obj = cls(**kwargs)
    return obj


def config_from_dict(data: dict, *, resolve: bool = True) -> Config:
    cfg = _from_dict(Config, data or {})
    validate(cfg)
    return resolve_compat(cfg) if resolve else cfg


def config_to_dict(cfg: Any) -> dict:
    d = asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, tuple):
            return list(x)
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        return x

    return fix(d)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | Mapping[str, Any]) -> dict:
    """Apply overrides to a copy of a nested dict: ``["a.b.c=value"]`` strings (values parsed as YAML
    scalars, as on the command line) or a mapping of dotted keys to Python values (``{"a.b.c": 3}``)."""
    data = copy.deepcopy(dict(data))
    if isinstance(overrides, Mapping):
        pairs = [(str(k), v, f"{k}={v!r}") for k, v in overrides.items()]
    else:
        pairs = []
        for ov in overrides:
            if "=" not in ov:
                raise ConfigError(f"override '{ov}' must look like key=value (e.g. train.epochs=2)")
            key, text = ov.split("=", 1)
            pairs.append((key, _parse_scalar(text), ov))
    for key, value, shown in pairs:
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{shown}': '{p}' is not a section")
        node[parts[-1]] = value
    return data


def merge_overrides(data: dict, overrides: list[str] | Mapping[str, Any] | None = None, cls: type = Config, *,
                    prefix: str = "") -> Any:
    """``data`` with ``overrides`` applied (see :func:`apply_overrides`), checked and built as the
    dataclass ``cls`` (``Config``, ``ModelConfig``, ...). Errors name the key (after ``prefix``, e.g.
    ``"model"`` for a ModelConfig); a whole ``Config`` is also validated."""
    merged = apply_overrides(data or {}, overrides or [])
    obj = _coerce(merged, cls, prefix)
    if cls is Config:
        validate(obj)
        resolve_compat(obj)
    return obj


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # recipes shipped in the package (package data)


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped in the package (``gare train demo``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str | Path) -> Path:
    """A recipe file: ``name`` itself when that file exists, else the packaged recipe of that name
    (``demo`` or ``demo.yaml`` -> the package's ``recipes/demo.yaml``)."""
    p = Path(name)
    if p.is_file():
        return p
    packaged = RECIPES_DIR / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
    if len(p.parts) == 1 and packaged.is_file():
        return packaged
    raise ConfigError(f"config file not found: {p} (packaged recipes, usable by name: "
                      f"{', '.join(packaged_recipes())})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                _chain: tuple[Path, ...] = (), _resolve: bool = True) -> Config:
    """Read a YAML recipe (a file, or a packaged recipe by name: ``demo``; ``base: other.yaml`` inherits) and
    apply overrides; validates everything."""
    data: dict = {}
    if path is not None:
        path = recipe_path(path)
        with open(path) as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        base = data.pop("base", None)
        if base is not None:
            chain = (*_chain, path.resolve())
            if (path.parent / str(base)).resolve() in chain:
                raise ConfigError(f"{path}: 'base: {base}' makes a cycle: " + " -> ".join(p.name for p in chain)
                                  + f" -> {Path(str(base)).name}")
            # unresolved: a child's or an override's `compat` still decides the switches the parent left null
            parent = load_config(path.parent / str(base), _chain=chain, _resolve=False)
            data = _merge(config_to_dict(parent), data)
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, resolve=_resolve)


def resolve_compat(cfg: Config) -> Config:
    """Turn every ``release`` switch left at null into ``compat == "release"``; the model records the mode
    (``model.compat = "release"`` when padded frames are treated as the release treats them). Idempotent."""
    on = cfg.compat == "release"
    for name in RELEASE_SWITCHES:
        if getattr(cfg.release, name) is None:
            setattr(cfg.release, name, on)
    cfg.model.compat = "release" if cfg.release.padded_frames else "none"
    if cfg.release.diagonal_positives:
        cfg.loss.multi_positive = False
    if cfg.release.plain_radius:
        cfg.loss.radius_plain_zero = True
    return cfg


def validate(cfg: Config) -> None:
    d = config_to_dict(cfg)
    for key, allowed in _CHOICES.items():
        node: Any = d
        for p in key.split("."):
            node = node[p]
        if node not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {sorted(allowed)}, got {node!r}")
    if cfg.model.scorer.eta not in (1.0, -1.0):
        raise ConfigError(f"config key 'model.scorer.eta' must be 1 or -1, got {cfg.model.scorer.eta}")
    if cfg.model.scorer.psi.stochastic and not cfg.model.scorer.psi.log_sigma_head:
        raise ConfigError("model.scorer.psi.stochastic=true needs model.scorer.psi.log_sigma_head=true")
    if cfg.model.scorer.delta_norm is not None and cfg.model.scorer.delta_norm <= 0:
        raise ConfigError("config key 'model.scorer.delta_norm' must be > 0 (or null for the released Delta)")
    if cfg.model.scorer.pool_temperature <= 0:
        raise ConfigError("config key 'model.scorer.pool_temperature' must be > 0")
    if cfg.train.batch_size < 2:
        raise ConfigError("config key 'train.batch_size' must be >= 2 (contrastive training needs negatives)")
    if not 0.0 <= cfg.data.noise_fraction < 1.0:
        raise ConfigError("config key 'data.noise_fraction' must be in [0, 1)")
