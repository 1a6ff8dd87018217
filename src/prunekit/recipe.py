"""Recipes: validated definitions of a pruning run. YAML in; saved beside every output."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from prunekit.assets.registry import DEFAULT_MODEL
from prunekit.engine.layerwise import PruneStage
from prunekit.engine.structured import PARTS, StructuredStage
from prunekit.errors import PrunekitError
from prunekit.files import read_yaml
from prunekit.methods import get_method, kind_of, names
from prunekit.methods.patterns import SparsityPattern

SEED_MAX = 2**63 - 1  # torch and numpy generators take 64-bit seeds
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
ONLY_FROM_COMMAND_LINE = ("trust_remote_code", "allow_pickle")  # they let files run code: never from a shared file


def one_line(error: ValidationError, what: str = "invalid recipe") -> PrunekitError:
    """Pydantic's first complaint as a one-line PrunekitError naming the field."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p not in ("weights", "structured")) or "recipe"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "not a setting of this stage or section (see `prunekit prune --help` and the README's recipes)"
    return PrunekitError(f"{what}: {where}: {message}")


class _Strict(BaseModel):
    """Unknown keys are errors, and so is every value outside its range, however the model is built."""

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise one_line(e, f"invalid {type(self).__name__.removesuffix('Config').lower() or 'setting'}"
                           ) from None


def _validate(model: type[BaseModel], data: dict) -> BaseModel:
    """Pydantic validation with its first complaint as a one-line PrunekitError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise one_line(e) from None


def _changed(config: BaseModel) -> set[str]:
    """Fields given a value other than their default: a full dump of a recipe (recipe.yaml) sets every field."""
    fields = type(config).model_fields
    return {name for name in config.model_fields_set if getattr(config, name) != fields[name].default}


class CalibrationConfig(_Strict):
    source: str = "wikipedia"
    samples: int = Field(128, gt=0)
    seq_len: int = Field(512, gt=0)
    text_column: str = "text"
    batch_size: int = Field(8, gt=0)


class EvaluationConfig(_Strict):
    ppl: bool = True
    dense: bool = True  # also measure the unpruned model, for the before/after table
    source: str = "wikipedia"
    samples: int = Field(16, gt=0)
    seq_len: int = Field(1024, ge=2)  # the first token of a window is not scored
    text_column: str = "text"


def _layer_patterns(entries: list[str]) -> tuple[SparsityPattern | None, ...]:
    """layer_pattern's entries parsed: an N:M pattern, or None for "dense" (the layer left as it is)."""
    parsed = tuple(None if e.strip().lower() == "dense" else SparsityPattern.parse(e) for e in entries)
    if any(p is not None and not p.is_nm for p in parsed):
        raise PrunekitError("layer_pattern entries are N:M patterns (e.g. 2:4) or dense, not unstructured")
    return parsed


class StageConfig(_Strict):
    method: str
    sparsity: float | None = None  # default: 0.5, or what an N:M pattern implies
    pattern: str = "unstructured"
    targets: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)
    allocation: Literal["uniform", "global", "owl"] = "uniform"
    min_density: float = Field(0.05, ge=0, lt=1)  # global: least fraction of weights any matrix keeps
    owl_m: float = Field(5.0, gt=0, allow_inf_nan=False)  # owl: outlier threshold, in multiples of a layer's mean score
    owl_lambda: float = Field(0.08, allow_inf_nan=False)  # owl: layer sparsities span sparsity +- owl_lambda
    # one sparsity per decoder layer, in layer order (what `prunekit search` chose); sparsity is then their mean
    layer_sparsity: list[Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]] | None = Field(None, min_length=1)
    # one N:M pattern (or "dense") per decoder layer, in layer order (`prunekit search --pattern`); sparsity: their mean
    layer_pattern: list[str] | None = Field(None, min_length=1)
    gradient_samples: int = Field(32, gt=0)  # gradient/gblm: calibration windows back-propagated
    block_size: int = 128  # SparseGPT: columns per block
    damping: float = Field(0.01, allow_inf_nan=False)  # SparseGPT: dampening, fraction of the mean Hessian diagonal
    parameters: dict[str, Any] = Field(default_factory=dict)  # a method's own options (see `prunekit methods`)
    refine: Literal["dsnot"] | None = None  # mask refinement after the method (DSnoT prune-and-grow)
    refine_steps: int = Field(50, gt=0)  # dsnot: prune-and-grow cycles at most
    permute: bool = False  # N:M only: reorder the MLP's intermediate channels first (absorbed, same function)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if kind_of(value) != "weights":
            raise PrunekitError(f"unknown method {value!r}: choose one of {', '.join(names())}")
        return value.lower()

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        return str(SparsityPattern.parse(value))

    @model_validator(mode="after")
    def _consistent(self) -> StageConfig:
        get_method(self.method).check_options(_changed(self))
        get_method(self.method).check_parameters(self.parameters)
        pattern = SparsityPattern.parse(self.pattern)
        if pattern.is_nm:
            if self.sparsity is not None and abs(self.sparsity - pattern.sparsity) > 1e-9:
                raise PrunekitError(
                    f"pattern {pattern} removes {pattern.sparsity:g} of the weights, not {self.sparsity:g}: "
                    f"drop the sparsity or set it to {pattern.sparsity:g}"
                )
            self.sparsity = pattern.sparsity
            if self.layer_sparsity is not None:
                raise PrunekitError(f"layer_sparsity does not apply to N:M patterns (every layer keeps {pattern}): "
                                    "drop it or use pattern unstructured")
            if self.allocation != "uniform":
                raise PrunekitError(f"allocation {self.allocation!r} does not apply to N:M patterns: use uniform")
            if self.layer_pattern is not None:
                raise PrunekitError(f"layer_pattern gives every layer its own N:M pattern; pattern {pattern} would "
                                    "set one for all: drop one of them")
        elif self.layer_pattern is not None:
            if self.layer_sparsity is not None or self.allocation != "uniform":
                raise PrunekitError("layer_pattern sets every layer's sparsity: drop layer_sparsity and allocation")
            implied = [p.sparsity if p else 0.0 for p in _layer_patterns(self.layer_pattern)]
            mean = sum(implied) / len(implied)
            if self.sparsity is not None and abs(self.sparsity - mean) > 1e-6:
                raise PrunekitError(f"sparsity {self.sparsity:g} is not the mean {mean:.6g} that layer_pattern "
                                    "implies: drop sparsity")
            self.sparsity = mean
        elif self.layer_sparsity is not None:
            mean = sum(self.layer_sparsity) / len(self.layer_sparsity)
            if self.allocation != "uniform":
                raise PrunekitError(f"layer_sparsity gives every layer its own sparsity; allocation "
                                    f"{self.allocation!r} would choose them too: drop one of them")
            if self.sparsity is not None and abs(self.sparsity - mean) > 1e-6:
                raise PrunekitError(f"sparsity {self.sparsity:g} is not the mean {mean:.6g} of layer_sparsity: drop "
                                    "sparsity (it is their mean)")
            self.sparsity = mean
        elif self.sparsity is None:
            self.sparsity = 0.5
        if self.permute and not pattern.is_nm:
            raise PrunekitError("permute reorders input channels for N:M patterns; unstructured sparsity has no "
                                "groups to fill: give pattern 2:4 (or 4:8), or drop permute")
        if "refine_steps" in _changed(self) and self.refine is None:
            raise PrunekitError("refine_steps is the cap of a refinement: add refine: dsnot (--refine dsnot) or "
                                "drop it")
        if self.damping <= 0:
            raise PrunekitError(f"dampening {self.damping:g} must be > 0 (default 0.01 of the mean Hessian diagonal)")
        groups = {p.m for p in _layer_patterns(self.layer_pattern) if p} if self.layer_pattern else {pattern.m}
        if self.block_size <= 0 or any(m and self.block_size % m for m in groups):
            raise PrunekitError(
                f"block size {self.block_size} must be a positive multiple of M={max(groups) or 1}, e.g. 128"
            )
        if self.allocation == "owl" and not (0 <= self.owl_lambda <= min(self.sparsity, 1 - self.sparsity)):
            raise PrunekitError(
                f"OWL lambda {self.owl_lambda:g} out of range: layer sparsities {self.sparsity:g} +- lambda must stay "
                f"within [0, 1], so use 0 <= lambda <= {min(self.sparsity, 1 - self.sparsity):g} (default 0.08)"
            )
        if self.allocation == "global" and not get_method(self.method).comparable_across_layers:
            raise PrunekitError(
                f"global allocation needs scores comparable across layers; {self.method} scores are not "
                "(use magnitude, or allocation uniform)"
            )
        if not 0.0 <= self.sparsity < 1.0:
            raise PrunekitError(
                f"sparsity {self.sparsity:g} is outside [0, 1): it is the fraction of weights removed, e.g. 0.5"
            )
        return self

    @classmethod
    def parse(cls, data: StageConfig | dict) -> StageConfig:
        return data if isinstance(data, StageConfig) else _validate(cls, data)

    def to_stage(self) -> PruneStage:
        return PruneStage(
            method=self.method,
            sparsity=float(self.sparsity),
            pattern=SparsityPattern.parse(self.pattern),
            targets=tuple(self.targets),
            layers=tuple(self.layers) if self.layers is not None else None,
            allocation=self.allocation,
            block_size=self.block_size,
            damping=self.damping,
            min_density=self.min_density,
            owl_m=self.owl_m,
            owl_lambda=self.owl_lambda,
            layer_sparsity=tuple(self.layer_sparsity) if self.layer_sparsity is not None else None,
            layer_pattern=_layer_patterns(self.layer_pattern) if self.layer_pattern is not None else None,
            gradient_samples=self.gradient_samples,
            parameters=dict(self.parameters),
            refine=self.refine,
            refine_steps=self.refine_steps,
            permute=self.permute,
        )


class StructuredStageConfig(_Strict):
    """Remove whole blocks (depth methods), MLP channels / attention heads in every layer (width methods), or tokens
    (the vocab method: tokenizer, embedding and head rows).

    How much: `sparsity` (fraction of the blocks, of each layer's channels / heads, or of the tokens), `size`
    (blocks to remove, or channels / heads per layer or tokens to keep), `param_fraction` (fraction of all the
    model's parameters), or for vocab `coverage` (keep the tokens that make up this fraction of the calibration
    text's tokens)."""

    method: str
    # default: blocks, mlp for width methods, vocab for the vocabulary method
    part: Literal["blocks", "mlp", "heads", "kv-heads", "vocab", "experts"] | None = None
    sparsity: float | None = Field(None, gt=0, lt=1)
    size: int | None = Field(None, gt=0)
    param_fraction: float | None = Field(None, gt=0, lt=1)
    coverage: float | None = Field(None, gt=0, le=1)
    bias_compensation: bool | None = None  # add removed channels' mean output as a bias; default on for flap
    gradient_samples: int = Field(32, gt=0)  # taylor / block-taylor: calibration windows back-propagated
    seed: Seed | None = None  # block-random; default: the recipe's seed
    top_k: int | None = Field(None, gt=0)  # moefy: experts each token uses (default 2)
    blocks: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)  # block-list: blocks to remove

    @model_validator(mode="before")
    @classmethod
    def _no_weight_settings(cls, data: Any) -> Any:
        """The weight stages' refine / refine_steps / permute: refused with a message that says why."""
        if isinstance(data, dict):
            given = [k for k in ("refine", "refine_steps", "permute") if data.get(k) not in (None, False)]
            if given:
                what = ("permute reorders the channels of N:M weight masks" if given == ["permute"] else
                        f"refine {data.get('refine') or 'dsnot'} refines weight masks")
                raise PrunekitError(f"{what}, but {data.get('method')} is a structured method (it removes whole "
                                    "blocks, channels or tokens): use it with a weight method such as wanda or "
                                    "sparsegpt")
            data = {k: v for k, v in data.items() if k not in ("refine", "refine_steps", "permute")}
        return data

    @field_validator("method")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _consistent(self) -> StructuredStageConfig:
        get_method(self.method).check_options(_changed(self))
        kind = kind_of(self.method)
        natural = {"depth": "blocks", "vocabulary": "vocab", "experts": "experts", "conversion": "mlp"}.get(
            str(kind), "mlp")
        part = self.part or natural
        if kind in ("depth", "vocabulary", "experts", "conversion") and part != natural:
            raise PrunekitError(f"{self.method} removes {natural}, not {part}: drop part (it is {natural})")
        if kind == "width" and part not in PARTS:
            raise PrunekitError(f"{self.method} prunes width, not {part}: use part {' | '.join(PARTS)}")
        self.part = part
        amounts = ("sparsity", "size", *(() if kind == "experts" else ("param_fraction",)),
                   *(("coverage",) if kind == "vocabulary" else ()))
        if (self.top_k is not None) != (kind == "conversion") and self.top_k is not None:
            raise PrunekitError(f"top_k is moefy's (experts per token); {self.method} does not take it")
        if self.method == "block-list":
            others = [n for n in amounts if n != "size" and getattr(self, n) is not None]
            if self.blocks is None or others or self.size not in (None, len(set(self.blocks))):
                raise PrunekitError("block-list removes the blocks it lists: give blocks (e.g. blocks: [3, 7]) and "
                                    "no sparsity, size or param_fraction")
            self.size = len(set(self.blocks))
            return self
        if kind == "conversion":
            if self.sparsity is not None or self.param_fraction is not None or self.coverage is not None:
                raise PrunekitError(f"{self.method} converts every MLP: give the expert count (size / --experts, "
                                    "default 8) and top_k (--top-k, default 2), not an amount to remove")
            self.size = self.size or 8
            self.top_k = self.top_k or 2
            return self
        if kind == "experts" and self.param_fraction is not None:
            raise PrunekitError(f"{self.method}: say how many experts each layer keeps (size / --experts-keep) or "
                                "the fraction of experts removed (sparsity), not param_fraction")
        if kind != "vocabulary" and self.coverage is not None:
            raise PrunekitError(f"{self.method}: coverage is for the vocab method; give sparsity, size or "
                                "param_fraction")
        given = [n for n in amounts if getattr(self, n) is not None]
        if len(given) != 1:
            described = {"sparsity": "sparsity (fraction removed)", "size": "size (count)",
                         "param_fraction": "param_fraction (fraction of the model's parameters)",
                         "coverage": "coverage (fraction of the text's tokens)"}
            raise PrunekitError(f"{self.method}: give exactly one of {', '.join(described[n] for n in amounts)}; "
                                f"got {', '.join(given) or 'none'}")
        return self

    def to_stage(self, seed: int = 0) -> StructuredStage:
        return StructuredStage(method=self.method, part=self.part or "blocks", sparsity=self.sparsity,
                               size=self.size, param_fraction=self.param_fraction, coverage=self.coverage,
                               bias_compensation=self.bias_compensation,
                               seed=self.seed if self.seed is not None else seed,
                               gradient_samples=self.gradient_samples, top_k=self.top_k, blocks=self.blocks)

    @property
    def is_vocabulary(self) -> bool:
        return kind_of(self.method) == "vocabulary"

    @property
    def is_conversion(self) -> bool:
        return kind_of(self.method) == "conversion"

    @property
    def needs_calibration(self) -> bool:
        """Whether it needs calibration windows (the vocabulary stage reads the calibration text itself)."""
        return bool(set(get_method(self.method).needs) - {"layer_index"}) and not self.is_vocabulary


def _stage_kind(value: object) -> str:
    method = value.get("method") if isinstance(value, dict) else getattr(value, "method", None)
    structured = ("depth", "width", "vocabulary", "experts", "conversion")
    return "structured" if kind_of(str(method)) in structured else "weights"


AnyStage = Annotated[
    Annotated[StageConfig, Tag("weights")] | Annotated[StructuredStageConfig, Tag("structured")],
    Discriminator(_stage_kind),
]


def parse_stage(data: StageConfig | StructuredStageConfig | dict) -> StageConfig | StructuredStageConfig:
    if isinstance(data, StageConfig | StructuredStageConfig):
        return data
    return _validate(StructuredStageConfig if _stage_kind(data) == "structured" else StageConfig, data)


def needs_calibration(stage: StageConfig | StructuredStageConfig) -> bool:
    return stage.needs_calibration if isinstance(stage, StructuredStageConfig) else stage.to_stage().needs_calibration


class Recipe(_Strict):
    model: str = Field(DEFAULT_MODEL, min_length=1)
    seed: Seed = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    trust_remote_code: bool = False
    allow_pickle: bool = False  # load .bin/.pt weights (pickle can run code); safetensors otherwise
    stream: bool = False  # read, prune and write one decoder layer at a time (models bigger than memory)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    stages: list[AnyStage] = Field(min_length=1)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _vocabulary_last(self) -> Recipe:
        for stage in self.stages[:-1]:
            if isinstance(stage, StructuredStageConfig) and stage.is_vocabulary:
                raise PrunekitError(f"{stage.method} renumbers the tokens the later stages would calibrate on: put "
                                    "the vocabulary stage last")
        return self

    @model_validator(mode="after")
    def _streamable(self) -> Recipe:
        if not self.stream:
            return self
        if self.allow_pickle:
            raise PrunekitError("--stream reads safetensors checkpoints only: drop --allow-pickle or --stream")
        experts = [s for s in self.stages if isinstance(s, StructuredStageConfig) and kind_of(s.method) == "experts"]
        if experts and len(self.stages) > 1:
            raise PrunekitError(f"--stream runs an expert stage ({experts[0].method}) alone: put it in a recipe of "
                                "its own, or drop --stream")
        for stage in self.stages:
            if experts:
                break
            if isinstance(stage, StructuredStageConfig):
                raise PrunekitError(
                    f"{stage.method} changes the model's shape, which --stream does not do (it rewrites one layer "
                    "at a time): drop --stream"
                )
            if "gradient_norms" in get_method(stage.method).needs:
                raise PrunekitError(
                    f"{stage.method} back-propagates through the whole model, which --stream never holds: "
                    "use magnitude, wanda or sparsegpt, or drop --stream"
                )
            if stage.allocation == "global":
                raise PrunekitError(
                    "global allocation ranks every weight of the model at once, which --stream never holds: "
                    "use --allocation uniform or owl, or drop --stream"
                )
        return self

    @classmethod
    def parse(cls, data: dict) -> Recipe:
        return _validate(cls, data)

    @classmethod
    def from_yaml(cls, path: Path, trust_remote_code: bool = False, allow_pickle: bool = False) -> Recipe:
        """The recipe in `path`. The two settings that let a model's files run code come from the arguments (the
        command line), never from the file: a file that switches one on is refused unless the argument does too."""
        data = read_yaml(path, "recipe file")
        if not isinstance(data, dict):
            raise PrunekitError(f"recipe file {path} must hold a mapping with at least 'stages'")
        allowed = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        for key in ONLY_FROM_COMMAND_LINE:
            if data.get(key) not in (None, False) and not allowed[key]:
                raise PrunekitError(f"recipe file {path} sets {key}: {data[key]!r}, which only the command line can "
                                    f"switch on (it lets the model's files run code): pass --{key.replace('_', '-')}")
            data[key] = allowed[key]
        return cls.parse(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# Command-line flags over a recipe: every value is optional (None = the flag was not given), and a given flag wins
# over the recipe file, which wins over the defaults.

DEFAULT_METHOD = "wanda"


def split_list(values: str) -> list[str]:
    """Comma-separated text as its stripped, non-empty items: "a, b,,c" -> ["a", "b", "c"]."""
    return [v.strip() for v in values.split(",") if v.strip()]


def parse_floats(values: str, what: str) -> list[float]:
    """Comma-separated numbers; anything else is a one-line error naming `what` (e.g. "--sparsity")."""
    try:
        return [float(v) for v in split_list(values)]
    except ValueError:
        raise PrunekitError(f"{what} must be comma-separated numbers, e.g. 0.3,0.5,0.7; got {values!r}") from None


def overlay(data: dict[str, Any], section: str, **values: Any) -> dict[str, Any]:
    """Set the given values (None: not given) in `data[section]` over what it holds; returns `data`, changed in place.
    With nothing given the section is left alone, so the recipe's defaults still apply."""
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        data[section] = {**data.get(section, {}), **given}
    return data


def overlay_stage(data: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Set the given stage values (None: not given) over the recipe's only stage, creating it (method wanda) when the
    recipe has none; returns `data`, changed in place. Flags cannot say which of several stages they mean."""
    given = {k: v for k, v in values.items() if v is not None}
    stages = list(data.get("stages") or [{}])
    if given and len(stages) > 1:
        raise PrunekitError("the recipe has several stages: set method/sparsity/pattern in the recipe, not as flags")
    stages[0] = {"method": DEFAULT_METHOD, **stages[0], **given}
    data["stages"] = stages
    return data


def recipe_from_flags(
    recipe_file: Path | None = None,
    model: str | None = None,
    *,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    stream: bool = False,
    stage: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Recipe:
    """The recipe `prunekit prune` runs: `recipe_file` (if any) with every given value laid over it.

    `stage`, `calibration` and `evaluation` map setting names to values, None for a flag not given. The switches
    `trust_remote_code`, `allow_pickle` and `stream` only ever turn a setting on. Without a recipe file, `model` is
    required."""
    data: dict[str, Any] = {}
    if recipe_file is not None:
        data = Recipe.from_yaml(recipe_file, trust_remote_code, allow_pickle).model_dump(exclude_unset=True)
    elif model is None:
        raise PrunekitError("name a MODEL to prune (see `prunekit models`) or pass --recipe")
    if model is not None:
        data["model"] = model
    data.update({k: v for k, v in (("seed", seed), ("device", device), ("dtype", dtype)) if v is not None})
    switches = (("trust_remote_code", trust_remote_code), ("allow_pickle", allow_pickle), ("stream", stream))
    data.update({k: True for k, on in switches if on})
    overlay_stage(data, **(stage or {}))
    overlay(data, "calibration", **(calibration or {}))
    overlay(data, "evaluation", **(evaluation or {}))
    return Recipe.parse(data)
