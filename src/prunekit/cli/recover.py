"""`prunekit recover`: LoRA fine-tuning or distillation of a pruned model, the sparsity mask re-applied."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli.common import OutDirOption, OverwriteOption, stdout
from prunekit.recipe import SEED_MAX


def recover(
    model: Annotated[str, typer.Argument(help="The pruned model directory (or any model prunekit loads).",
                                         show_default=False)],
    out: OutDirOption = ...,
    method: Annotated[str, typer.Option(help="lora (LM loss) | distill (KL to --teacher's logits).")] = "lora",
    teacher: Annotated[str | None, typer.Option(help="The dense model (same tokenizer): needed by distill; "
                                                "with lora, only its perplexity is reported.")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Windows per step.")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per window.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, then cosine to a tenth).")] = 5e-4,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / rank).")] = 32,
    temperature: Annotated[float, typer.Option(help="distill: softmax temperature.")] = 1.0,
    lm_weight: Annotated[float, typer.Option(help="distill: weight of the LM loss added to the KL.")] = 0.0,
    text: Annotated[str, typer.Option(help="Training text (its calibration split) and held-out text (its "
                                      "evaluation split): wikipedia, a file or folder, or hf:NAME.")] = "wikipedia",
    ppl: Annotated[bool, typer.Option("--ppl/--no-ppl", help="Perplexity before and after.")] = True,
    ppl_samples: Annotated[int, typer.Option(help="Perplexity windows.")] = 16,
    ppl_seq_len: Annotated[int, typer.Option(help="Tokens per perplexity window.")] = 1024,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (a rerun resumes).")] = 25,
    work_dir: Annotated[Path | None, typer.Option(help="Checkpoint folder (default: OUT.work).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the window order and the adapters.")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Recover a pruned model's quality: LoRA fine-tuning or distillation from the dense model, merged back into the
    weights with the sparsity mask re-applied (the saved model has exactly the zeros it came with).

      prunekit recover out/smollm2-wanda50 --steps 200 --out out/smollm2-wanda50-lora

      prunekit recover out/smollm2-depth25 --method distill --teacher smollm2-135m --steps 200 --out out/d25-kd
    """
    from prunekit.api import recover_model
    from prunekit.recipe import EvaluationConfig
    from prunekit.recovery.finetune import RecoveryConfig

    config = RecoveryConfig(method=method, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                            lora_rank=lora_rank, lora_alpha=lora_alpha, temperature=temperature,
                            lm_weight=lm_weight, checkpoint_every=checkpoint_every, source=text, seed=seed)
    evaluation = EvaluationConfig(source=text, samples=ppl_samples, seq_len=ppl_seq_len) if ppl else None
    report = recover_model(model, out, config, teacher, evaluation, work_dir, overwrite, say=stdout.print)
    section = report["recovery"]
    table = Table(title=f"{method}: {steps} steps x {batch_size} x {seq_len} tokens in {section['seconds']:.0f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, result in report["perplexity"].items():
        table.add_row(f"perplexity {name}", f"{result['perplexity']:.3f}")
    table.add_row("loss (first 10 / last 10 steps)", f"{section['loss_first_10']:.3f} / {section['loss_last_10']:.3f}")
    sparsity = report["decoder_linear_sparsity"]
    table.add_row("sparsity of the decoder linears, before -> after",
                  f"{sparsity['before']:.2%} -> {sparsity['after']:.2%}")
    table.add_row("zeros kept (every linear that had zeros)",
                  f"{section['masked_zeros_after']:,} of {section['masked_zeros_before']:,}")
    stdout.print(table)
    stdout.print(f"saved: {out}")
