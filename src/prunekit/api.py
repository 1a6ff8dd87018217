"""The public Python API: load, prune, evaluate, save; and `run`, which does all four from a recipe."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunekit.engine.cache import ScoreCache
from prunekit.engine.experts import experts_to_keep
from prunekit.engine.layerwise import MatrixSparsity, Phases, prune_layerwise
from prunekit.engine.moefy import moefy
from prunekit.engine.streaming import StreamedLayers, load_outside_layers, meta_model, release_memory
from prunekit.engine.structured import StructuredResult, StructuredStage, run_structured
from prunekit.engine.vocabulary import prune_vocabulary
from prunekit.errors import PrunekitError
from prunekit.eval.perplexity import PerplexityResult, perplexity
from prunekit.models.adapters import ModelAdapter, adapter_for
from prunekit.models.loading import (
    LoadedModel,
    compute_dtype,
    load_config_and_tokenizer,
    load_model,
    local_checkpoint,
    resolve_device,
)
from prunekit.models.shards import Checkpoint, ShardWriter
from prunekit.outputs import check_output, check_work_directory, remove_work_directory
from prunekit.progress import console, progress_bar
from prunekit.recipe import (
    CalibrationConfig,
    EvaluationConfig,
    Recipe,
    StageConfig,
    StructuredStageConfig,
    needs_calibration,
    parse_stage,
)
from prunekit.report.record import Record
from prunekit.report.schema import (
    MatrixRecord,
    PerplexityPair,
    PerplexityScore,
    PruneReport,
    RecoveryReport,
    RecoverySection,
    SparsityChange,
    Structure,
    ZeroShotScore,
)
from prunekit.rundir import run_directory, write_run
from prunekit.runinfo import VERSION, count_parameters, count_zeros, peak_rss_bytes, versions
from prunekit.text.sources import load_texts
from prunekit.text.tokens import calibration_windows, evaluation_windows, token_stream

if TYPE_CHECKING:
    from prunekit.recovery.finetune import RecoveryConfig


@dataclass
class PruneResult:
    matrices: list[MatrixSparsity]
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # where the seconds went (see prune_layerwise)
    structured: list[StructuredResult] = field(default_factory=list)  # what each structured stage removed
    tokenizer: PreTrainedTokenizerBase | None = None  # the rewritten tokenizer, after a vocabulary stage
    model: nn.Module | None = None  # the new model, after a conversion stage (moefy): use it from then on

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all linears of the decoder layers."""
        return _zero_fraction(self.matrices)


def _zero_fraction(matrices: Sequence[MatrixSparsity]) -> float:
    return sum(m.zeros for m in matrices) / max(1, sum(m.numel for m in matrices))


def check_seq_len(model: nn.Module, seq_len: int, what: str) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise PrunekitError(f"{what} sequence length {seq_len} exceeds the model's context of {limit} tokens")


def calibration_data(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: CalibrationConfig | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Seeded calibration windows [samples, seq_len] from the configured source's calibration split."""
    config = config or CalibrationConfig()
    check_seq_len(model, config.seq_len, "calibration")
    texts = load_texts(config.source, "calibration", config.text_column)
    return calibration_windows(token_stream(tokenizer, texts), config.samples, config.seq_len, seed)


def prune(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: str = "unstructured",
    targets: Sequence[str] = ("*",),
    stages: Sequence[StageConfig | StructuredStageConfig | dict] | None = None,
    calibration: torch.Tensor | CalibrationConfig | None = None,
    seed: int = 0,
    device: str | None = "auto",
    batch_size: int = 8,
    progress: bool = True,
    cache_scores: bool = True,
) -> PruneResult:
    """Prune a loaded causal LM in place: structured stages remove blocks, channels or heads; the others zero
    weights layer by layer.

    Either give one `method`/`sparsity`/`pattern`/`targets`, or a list of `stages` (StageConfig,
    StructuredStageConfig, or dicts with their keys), run in order. `calibration` is a LongTensor of token ids
    [samples, seq_len], or a CalibrationConfig from which windows are drawn with `tokenizer` and `seed` (default:
    128 x 512 tokens of the Wikipedia calibration split). `sparsity` defaults to 0.5, or to what an N:M `pattern`
    implies. `batch_size` windows go through a layer at once (a CalibrationConfig's own batch_size wins).
    `cache_scores`: keep structured importance scores on disk, so another target size reuses them.

    A vocabulary stage (method vocab, last) counts tokens on the whole calibration text (or on the token ids given
    as `calibration`) and rewrites the tokenizer as well: use `result.tokenizer` with the model from then on.
    """
    if stages is None:
        stages = [dict(method=method, sparsity=sparsity, pattern=pattern, targets=list(targets))]
    parsed = [parse_stage(s) for s in stages]
    torch.manual_seed(seed)
    adapter = adapter_for(model)
    windows = torch.empty(0, 1, dtype=torch.long)
    if any(needs_calibration(s) for s in parsed):
        if isinstance(calibration, torch.Tensor):
            windows = calibration
        elif tokenizer is None:
            raise PrunekitError("this method needs calibration data: pass a tokenizer or token ids as calibration")
        else:
            windows = calibration_data(model, tokenizer, calibration, seed)
            batch_size = calibration.batch_size if calibration is not None else batch_size
    start = time.perf_counter()
    target = resolve_device(device)
    phases = Phases(target)
    cache = ScoreCache(cache_scores)
    notes: dict[str, list[str]] = {}
    structured: list[StructuredResult] = []
    trimmed: PreTrainedTokenizerBase | None = None
    for is_structured, group in groupby(parsed, key=lambda s: isinstance(s, StructuredStageConfig)):
        if is_structured:
            for stage in group:
                if stage.is_vocabulary:
                    with phases("vocabulary"):
                        result, trimmed = _prune_vocabulary(adapter, tokenizer, stage.to_stage(seed), calibration)
                    structured.append(result)
                    continue
                if stage.is_conversion:
                    with phases("conversion"):
                        converted, done = moefy(adapter, stage.size, stage.top_k, windows, target, batch_size,
                                                stage.seed if stage.seed is not None else seed,
                                                console.log if progress else None)
                    adapter = adapter_for(converted)
                    structured.append(StructuredResult(
                        f"moefy: {done['experts']} experts of {done['expert_width']} channels, top {done['top_k']} "
                        f"per token ({done['family']})", removed=done))
                    continue
                with phases("structured"):
                    result = run_structured(adapter, stage.to_stage(seed), windows, target, batch_size, cache,
                                            on_step=console.log if progress else None)
                structured.append(result)
            continue
        with progress_bar() as bar:
            task = bar.add_task("pruning layers", total=len(adapter.layers), visible=progress)
            matrices = prune_layerwise(
                adapter,
                windows,
                [s.to_stage() for s in group],
                target,
                batch_size=batch_size,
                on_layer=lambda done, _total, task=task: bar.update(task, completed=done),
                phases=phases,
                cache=cache,
            )
        for m in matrices:
            notes.setdefault(m.name, []).extend(m.notes)
    return PruneResult(_matrix_sparsity(adapter, notes), time.perf_counter() - start, dict(phases), structured,
                       trimmed, adapter.model if adapter.model is not model else None)


def _prune_vocabulary(adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase | None, stage: StructuredStage,
                      calibration: torch.Tensor | CalibrationConfig | None) -> tuple[StructuredResult,
                                                                                     PreTrainedTokenizerBase]:
    """The vocabulary stage on the calibration text: its documents, or the text of the token ids given."""
    if tokenizer is None:
        raise PrunekitError(f"{stage.method} rewrites the tokenizer along with the model: pass the tokenizer")
    if isinstance(calibration, torch.Tensor):
        texts = [tokenizer.decode(row) for row in calibration.tolist()]
    else:
        config = calibration or CalibrationConfig()
        with console.status("reading the calibration text"):
            texts = load_texts(config.source, "calibration", config.text_column)
    with console.status("counting tokens and rewriting the tokenizer"):
        return prune_vocabulary(adapter, tokenizer, stage, texts)


def decoder_linear_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all linears of the decoder layers (what a prune's sparsity target counts)."""
    return _zero_fraction(_matrix_sparsity(adapter_for(model), {}))


def _matrix_sparsity(adapter: ModelAdapter, notes: dict[str, list[str]]) -> list[MatrixSparsity]:
    """Zeros per linear (and per expert matrix of an MoE model) of the decoder layers as the model is now."""
    return [MatrixSparsity(f"layers.{i}.{name}", int((lin.weight == 0).sum()), lin.weight.numel(),
                           notes.get(f"layers.{i}.{name}", []))
            for i, layer in enumerate(adapter.layers)
            for name, lin in {**adapter.linears(layer), **adapter.expert_matrices(layer)}.items()]


def evaluation_data(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: EvaluationConfig) -> torch.Tensor:
    """The perplexity windows [samples, seq_len] of the configured text's evaluation split."""
    check_seq_len(model, config.seq_len, "evaluation")
    texts = load_texts(config.source, "evaluation", config.text_column)
    return evaluation_windows(token_stream(tokenizer, texts), config.samples, config.seq_len)


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: EvaluationConfig | None = None,
    description: str = "perplexity",
    progress: bool = True,
    windows: torch.Tensor | None = None,
) -> PerplexityResult:
    """Perplexity on the evaluation split of the configured text (see prunekit.eval.perplexity for the protocol);
    `windows` from `evaluation_data` when they were drawn already."""
    config = config or EvaluationConfig()
    if windows is None:
        windows = evaluation_data(model, tokenizer, config)
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(windows), visible=progress)
        return perplexity(model, windows, config.source, on_batch=lambda d, t: bar.update(task, completed=d),
                          tokenizer=tokenizer)


STRUCTURE_FIELDS = ("model_type", "num_hidden_layers", "intermediate_size", "ffn_dim", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "layer_types", "attention_bias", "mlp_bias",
                    "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size")


def save(loaded: LoadedModel, out: Path, report: Record | dict, recipe: Recipe | None = None,
         overwrite: bool = False, inputs: Sequence[str | Path | None] = ()) -> None:
    """Write model (safetensors, in the checkpoint's own dtype), tokenizer, prunekit.json (a report record of
    prunekit.report.schema, or your own dict) and recipe.yaml; never over the model's own directory or the other
    `inputs` (see prunekit.rundir)."""
    write_run(out, report, recipe, loaded, overwrite, inputs)


def _score(result: PerplexityResult) -> PerplexityScore:
    return PerplexityScore(**result.to_dict())


def prune_report(recipe: Recipe, result: PruneResult, parameters: int, zeros: int,
                 dense: PerplexityResult | None, pruned: PerplexityResult | None, timings: dict[str, float],
                 dense_parameters: int | None = None, config: object = None,
                 zeroshot: Sequence[dict] | None = None) -> PruneReport:
    """The report of a prune (prunekit.json); `zeroshot`: the pruned model's zero-shot results (sweep points)."""
    structure = None
    if result.structured:
        structure = Structure(dense_parameters=dense_parameters, parameters_removed=dense_parameters - parameters,
                              stages=[asdict(r) for r in result.structured],
                              config={k: getattr(config, k) for k in STRUCTURE_FIELDS if hasattr(config, k)})
    report = PruneReport(
        source_model=recipe.model,
        recipe=recipe.model_dump(mode="json"),
        seed=recipe.seed,
        versions=versions(),
        parameters=parameters,
        zero_parameters=zeros,
        decoder_linear_sparsity=result.sparsity,
        matrices=[MatrixRecord(name=m.name, numel=m.numel, zeros=m.zeros, sparsity=m.sparsity, notes=m.notes)
                  for m in result.matrices],
        notes=[f"{m.name}: {note}" for m in result.matrices for note in m.notes],
        perplexity=PerplexityPair(dense=_score(dense) if dense else None,
                                  pruned=_score(pruned) if pruned else None),
        seconds=timings,
        prune_phase_seconds={k: round(v, 2) for k, v in result.phases.items()},
        structure=structure,
        peak_rss_bytes=peak_rss_bytes(),
        peak_gpu_bytes=torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    )
    if zeroshot is not None:
        report.zeroshot = [ZeroShotScore(**r) for r in zeroshot]
    return report


def run(recipe: Recipe, out: Path, overwrite: bool = False) -> dict:
    """Load, evaluate dense, prune, evaluate pruned, save. Returns the report written to prunekit.json (as JSON;
    `prunekit.report.schema.PruneReport.parse` types it)."""
    started = time.perf_counter()
    check_output(out, overwrite, (recipe.model,))
    if recipe.stream:
        return run_streaming(recipe, out, overwrite)
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    with console.status(f"loading {recipe.model}"):
        loaded = load_model(recipe.model, recipe.dtype, recipe.device, recipe.trust_remote_code, recipe.allow_pickle)
    timed("load", t0)
    device = resolve_device(recipe.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    evaluation = recipe.evaluation
    eval_windows = evaluation_data(model, tokenizer, evaluation) if evaluation.ppl else None  # bad text fails now
    t0 = time.perf_counter()
    windows = None
    # a vocabulary stage reads the whole calibration text: prune() draws the other stages' windows from it then
    vocabulary = any(isinstance(s, StructuredStageConfig) and s.is_vocabulary for s in recipe.stages)
    if any(needs_calibration(s) for s in recipe.stages) and not vocabulary:
        windows = calibration_data(model, tokenizer, recipe.calibration, recipe.seed)
    timed("calibration_data", t0)
    dense = None
    if evaluation.ppl and evaluation.dense:
        t0 = time.perf_counter()
        model.to(device)
        dense = evaluate(model, tokenizer, evaluation, "dense perplexity", windows=eval_windows)
        model.to("cpu")
        timed("eval_dense", t0)
    dense_parameters = count_parameters(model)
    result = prune(model, tokenizer, stages=recipe.stages,
                   calibration=windows if windows is not None else recipe.calibration, seed=recipe.seed,
                   device=recipe.device, batch_size=recipe.calibration.batch_size)
    timings["prune"] = round(result.seconds, 2)
    if result.model is not None:  # converted into another family
        loaded.model = model = result.model
    if result.tokenizer is not None:  # the same text, tokenized by the model's new tokenizer
        loaded.tokenizer = tokenizer = result.tokenizer
        eval_windows = evaluation_data(model, tokenizer, evaluation) if evaluation.ppl else None
    pruned = None
    if evaluation.ppl:
        t0 = time.perf_counter()
        model.to(device)
        pruned = evaluate(model, tokenizer, evaluation, "pruned perplexity", windows=eval_windows)
        model.to("cpu")
        timed("eval_pruned", t0)
    parameters = count_parameters(model)
    zeros = count_zeros(model)
    report = prune_report(recipe, result, parameters, zeros, dense, pruned, timings, dense_parameters, model.config)
    with console.status(f"saving to {out}"):
        report.seconds["total"] = round(time.perf_counter() - started, 2)
        save(loaded, out, report, recipe, overwrite)
    return report.to_json()


def run_streaming(recipe: Recipe, out: Path, overwrite: bool = False, calibration: torch.Tensor | None = None) -> dict:
    """`run` for models bigger than memory: one decoder layer is read, pruned and written at a time.

    Needs a safetensors checkpoint (a local directory, an offline model, a GGUF file or a hub id, downloaded first).
    Perplexity needs the whole model, so it is skipped here: evaluate the output where it fits. `calibration`
    (token ids [samples, seq_len]) replaces the windows the recipe would draw.
    """
    started = time.perf_counter()
    if "batch_size" not in recipe.calibration.model_fields_set:
        # Streaming is for memory: one window at a time through a layer (on a CPU about as fast as eight).
        recipe = recipe.model_copy(update={"calibration": recipe.calibration.model_copy(update={"batch_size": 1})})
    directory = local_checkpoint(recipe.model)
    check_output(out, overwrite, (recipe.model, directory))
    config, tokenizer, saved_dtype = load_config_and_tokenizer(str(directory), recipe.trust_remote_code)
    device = resolve_device(recipe.device)
    dtype = compute_dtype(recipe.dtype, device, saved_dtype)
    model = meta_model(config, dtype, recipe.trust_remote_code)
    adapter = adapter_for(model)
    checkpoint = Checkpoint(directory)
    expert_stage = next((s for s in recipe.stages if isinstance(s, StructuredStageConfig)), None)  # alone
    stages = [] if expert_stage else [s.to_stage() for s in recipe.stages]
    if expert_stage:
        experts_to_keep(adapter, expert_stage.size, expert_stage.sparsity)  # a bad count fails before any work
    dense_parameters = sum(p.numel() for p in model.parameters()) if expert_stage else None
    layers_prefix = adapter.layers_path + "."
    outside = {n: p.numel() for n, p in model.named_parameters() if not n.startswith(layers_prefix)}
    windows = torch.empty(0, 1, dtype=torch.long)
    if any(needs_calibration(s) for s in recipe.stages):
        if calibration is None:
            calibration = calibration_data(model, tokenizer, recipe.calibration, recipe.seed)
        windows = calibration
        release_memory()  # what reading the calibration text left behind
        load_outside_layers(adapter, checkpoint, windows, dtype)
    torch.manual_seed(recipe.seed)
    with run_directory(out, overwrite, (recipe.model, directory)) as run_dir:
        tmp = run_dir.path
        writer = ShardWriter(tmp)
        store = StreamedLayers(adapter, device, checkpoint, writer, dtype, saved_dtype)
        t0 = time.perf_counter()
        phases = Phases(device)
        structured: list[StructuredResult] = []
        matrices: list[MatrixSparsity] = []
        if expert_stage:
            structured.append(run_structured(adapter, expert_stage.to_stage(recipe.seed), windows, device,
                                             recipe.calibration.batch_size, on_step=console.log, store=store))
        else:
            with progress_bar() as bar:
                task = bar.add_task("pruning layers (streamed)", total=len(adapter.layers))
                matrices = prune_layerwise(adapter, windows, stages, device, recipe.calibration.batch_size,
                                           on_layer=lambda done, total: bar.update(task, completed=done),
                                           store=store, phases=phases)
        result = PruneResult(matrices, time.perf_counter() - t0, dict(phases), structured)
        with console.status("copying embeddings, head and norms"):
            store.copy_rest()
            zeros = store.zeros + sum(checkpoint.count_zeros(n) for n in outside if n in checkpoint)
            writer.finish()
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (directory / "generation_config.json").exists():
            shutil.copyfile(directory / "generation_config.json", tmp / "generation_config.json")
        timings = {"prune": round(result.seconds, 2), "total": round(time.perf_counter() - started, 2)}
        report = prune_report(recipe, result, store.parameters + sum(outside.values()), zeros, None, None, timings,
                              dense_parameters, config)
        report.notes.append("streamed: perplexity skipped (it needs the whole model); run `prunekit eval` on it")
        run_dir.finish(report, recipe)
    return report.to_json()


def recover_model(model: str, out: Path, config: RecoveryConfig, teacher: str | None = None,
                  evaluation: EvaluationConfig | None = None, work_dir: Path | None = None,
                  overwrite: bool = False, say: Callable[[str], None] = print) -> dict:
    """Load a pruned model, fine-tune it (prunekit.recovery), save it with its zeros intact; returns the report.

    Perplexity is measured before and after on the held-out split when `evaluation` is given (and on the teacher)."""
    from prunekit.recovery.finetune import check_teacher, recover

    inputs = (model, teacher)
    out = check_output(out, overwrite, inputs)
    work = check_work_directory(work_dir or out.with_name(f"{out.name}.work"), "recover", inputs, output=out)
    loaded = load_model(model, "float32", "cpu")
    dense = load_model(teacher, "float32", "cpu") if teacher else None
    if dense is not None:
        check_teacher(loaded.tokenizer, dense.tokenizer, loaded.model.config.vocab_size,
                      dense.model.config.vocab_size)
    scores: dict[str, PerplexityScore] = {}  # before / teacher / after, in the order measured
    if evaluation is not None:
        scores["before"] = _score(evaluate(loaded.model, loaded.tokenizer, evaluation, "perplexity before"))
        if dense is not None:
            scores["teacher"] = _score(evaluate(dense.model, dense.tokenizer, evaluation, "perplexity teacher"))
    sparsity_before = decoder_linear_sparsity(loaded.model)
    merged, section = recover(loaded.model, loaded.tokenizer, config, work,
                              dense.model if dense is not None else None, say)
    loaded.model = merged
    if evaluation is not None:
        scores["after"] = _score(evaluate(merged, loaded.tokenizer, evaluation, "perplexity after"))
    report = RecoveryReport(
        prunekit_version=VERSION, versions=versions(), model=model, teacher=teacher,
        recovery=RecoverySection(**section),
        perplexity=scores, parameters=count_parameters(merged), zero_parameters=count_zeros(merged),
        decoder_linear_sparsity=SparsityChange(before=sparsity_before, after=decoder_linear_sparsity(merged)))
    save(loaded, out, report, overwrite=overwrite, inputs=inputs)
    remove_work_directory(work)  # the checkpoint is only for resuming an unfinished run; only prunekit's own folder
    return report.to_json()
