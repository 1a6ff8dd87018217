"""The typed schema of what prunekit writes about a run: `prunekit.json` of a prune run (PruneReport) or of a recovery
(RecoveryReport), and a sweep's `sweep.json` (SweepReport, with its SweepPoints).

prune, recover and sweep build these records and write them (prunekit.rundir); `prunekit report` reads them back
(prunekit.report.runs). Writing is strict and reading tolerant: see prunekit.report.record. Nothing here imports the
rest of the report package (pages, plots), so the writers can import it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, TypeAdapter

from prunekit.report.record import READING, Entries, Integer, Items, Message, Note, Number, Record, Text

# --- pieces shared by the reports -----------------------------------------------------------------------------------

class PerplexityScore(Record):
    """prunekit.eval.perplexity.PerplexityResult."""

    perplexity: Number = None
    tokens: Integer = None  # predicted tokens
    samples: Integer = None
    seq_len: Integer = None
    source: Text = None
    characters: Integer = None  # characters the predicted tokens spell
    char_perplexity: Number = None  # per character: compares models with different tokenizers

    optional = frozenset({"characters", "char_perplexity"})  # only when a tokenizer counted the characters


class ZeroShotScore(Record):
    """prunekit.eval.zeroshot.ZeroShotResult.to_dict()."""

    task: str | None = None
    examples: Integer = None
    acc: Number = None
    acc_stderr: Number = None
    acc_norm: Number = None
    acc_norm_stderr: Number = None
    seconds: Number = None
    chance: Number = None
    metric: Text = None  # the one a paper's table reports: acc, acc_norm, or exact_match (held in acc)
    acc_ci95: list[Number] | None = None
    acc_norm_ci95: list[Number] | None = None


# --- prunekit.json of a prune run -----------------------------------------------------------------------------------

class MatrixRecord(Record):
    """One pruned linear of the decoder layers."""

    name: str | None = None  # "layers.3.mlp.up_proj"
    numel: Integer = None
    zeros: Integer = None
    sparsity: Number = None
    notes: Items[Note] = []


class PerplexityPair(Record):
    dense: PerplexityScore | None = None
    pruned: PerplexityScore | None = None


class ZeroShotPair(Record):
    """Zero-shot results of both models (read only: a report may hold them in this form)."""

    pruned: Items[ZeroShotScore] = []
    dense: Items[ZeroShotScore] = []


class Structure(Record):
    """What structured stages removed (a prune with block, channel or head removal)."""

    dense_parameters: Integer = None
    parameters_removed: Integer = None
    stages: Items[dict[str, Any]] = []  # prunekit.engine.structured.StructuredResult, one per stage
    config: dict[str, Any] = {}  # the model config's structure fields after pruning


class StageRecord(Record):
    """What the report reads of a recipe stage (the recipe itself is kept as recorded)."""

    method: Text = None
    pattern: Text = None  # weight stages
    layer_pattern: Items[Text] | None = None  # weight stages with one N:M pattern per layer (prunekit search)
    part: Text = None  # structured stages: blocks, mlp, heads, kv-heads
    sparsity: Number = None


_STAGES: TypeAdapter[list[StageRecord]] = TypeAdapter(Items[StageRecord])


class PruneReport(Record):
    """prunekit.json of `prunekit prune` (and of each sweep point, which adds its zero-shot results)."""

    optional = frozenset({"zeroshot"})
    version_key = "prunekit_report_version"

    source_model: Text = None
    recipe: dict[str, Any] | None = None  # prunekit.recipe.Recipe, as JSON
    seed: Integer = None
    versions: dict[str, Text] = {}  # prunekit, torch, transformers, python
    parameters: Integer = None
    zero_parameters: Integer = None
    decoder_linear_sparsity: Number = None
    matrices: Items[MatrixRecord] = []
    notes: Items[Note] = []
    perplexity: PerplexityPair = PerplexityPair.model_construct()  # defaults are not a writer's records
    seconds: dict[str, Number] = {}
    prune_phase_seconds: dict[str, Number] = {}
    structure: Structure | None = None
    peak_rss_bytes: Integer = None
    peak_gpu_bytes: Integer = None
    # The pruned model's zero-shot results (sweep points); the pair form is read, never written.
    zeroshot: ZeroShotPair | Items[ZeroShotScore] | None = Field(None, union_mode="left_to_right")

    def stages(self) -> list[StageRecord]:
        """The recipe's stages that are well formed (read tolerantly, like everything read)."""
        stages = self.recipe.get("stages") if self.recipe is not None else None
        return _STAGES.validate_python(stages, context=READING)


# --- prunekit.json of a recovery run --------------------------------------------------------------------------------

class RecoverySection(Record):
    """prunekit.recovery.finetune.RecoveryConfig's settings, then what training did."""

    model_config = ConfigDict(extra="allow")  # a newer version's settings are kept (the page shows every setting)

    method: Text = None
    steps: Integer = None
    batch_size: Integer = None
    seq_len: Integer = None
    lr: Number = None
    warmup: Integer = None
    lora_rank: Integer = None
    lora_alpha: Integer = None
    temperature: Number = None
    lm_weight: Number = None
    checkpoint_every: Integer = None
    source: Text = None
    text_column: Text = None
    seed: Integer = None
    tokens: Integer = None
    loss_first_10: Number = None
    loss_last_10: Number = None
    losses: Items[Number] = []
    masked_weights: Integer = None
    masked_zeros_before: Integer = None
    masked_zeros_after: Integer = None
    seconds: Number = None


class SparsityChange(Record):
    before: Number = None
    after: Number = None


class RecoveryReport(Record):
    """prunekit.json of `prunekit recover` (it has no format version key: a `recovery` section marks it)."""

    prunekit_version: Text = None
    versions: dict[str, Text] = {}
    model: Text = None
    teacher: Text = None
    recovery: RecoverySection = RecoverySection.model_construct()
    perplexity: Entries[PerplexityScore] = {}  # before / teacher / after: the ones measured
    parameters: Integer = None
    zero_parameters: Integer = None
    decoder_linear_sparsity: SparsityChange | None = None


# --- sweep.json -----------------------------------------------------------------------------------------------------

class SweepDense(Record):
    """The dense model as the sweep measured it (also the work folder's dense.json)."""

    perplexity: Number = None
    zeroshot: Items[ZeroShotScore] = []
    parameters: Integer = None
    zero_parameters: Integer = None


class SweepPoint(Record):
    """One row of a sweep: what it measured, and where the point's full PruneReport lies."""

    optional = frozenset({"error", "peak_rss_bytes"})

    method: Text = None
    sparsity: Number = None
    pattern: Text = None
    perplexity: Number = None
    zeroshot: Items[ZeroShotScore] = []
    prune_seconds: Number = None
    decoder_linear_sparsity: Number = None
    parameters: Integer = None
    zero_parameters: Integer = None
    report: str | None = None  # the point's prunekit.json, relative to the sweep directory
    error: Message = None  # a point that failed
    peak_rss_bytes: Integer = None


class TextProtocol(Record):
    """prunekit.recipe.EvaluationConfig: how perplexity was measured."""

    ppl: bool | None = None
    dense: bool | None = None
    source: Text = None
    samples: Integer = None
    seq_len: Integer = None
    text_column: Text = None


class ZeroShotProtocol(Record):
    tasks: Items[str] = []
    limit: Integer = None
    prompt: Text = None
    seed: Integer = None


class SweepReport(Record):
    """sweep.json: the grid, how every point was measured, the dense model, and one row per point."""

    optional = frozenset({"pattern"})
    version_key = "prunekit_sweep_version"

    versions: dict[str, Text] = {}
    model: Text = None
    methods: Items[str] = []
    sparsities: Items[Number] = []
    patterns: Items[str] = []
    seed: Integer = None
    calibration: dict[str, Any] | None = None  # prunekit.recipe.CalibrationConfig, as JSON
    perplexity_protocol: TextProtocol | None = None
    zeroshot_protocol: ZeroShotProtocol | None = None
    dense: SweepDense | None = None
    points: Items[SweepPoint] = []
    seconds: dict[str, Number] = {}
    peak_rss_bytes: Integer = None
    pattern: Text = None  # read only: the pattern of every point, in sweeps that had one
