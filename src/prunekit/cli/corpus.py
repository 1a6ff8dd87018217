"""`prunekit data dedup` and `prunekit data ppl-filter`: text-corpus steps run locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli.common import OutDirOption, OverwriteOption, stdout
from prunekit.errors import PrunekitError
from prunekit.recipe import SEED_MAX

CorpusArg = Annotated[
    str, typer.Argument(help="A .jsonl or .parquet file, a folder of them, a datasets save_to_disk folder, or "
                        "hf:NAME[:CONFIG]\\[@SPLIT].", show_default=False),
]
TextColumnOption = Annotated[str, typer.Option(help="Column holding the text.")]
IdColumnOption = Annotated[str | None, typer.Option(help="Column of unique ids (default: row numbers).")]
ExecutorOption = Annotated[str, typer.Option(help="local (streaming, one machine) | ray (Ray Data).")]
RayAddressOption = Annotated[
    str | None, typer.Option(help="Ray cluster to join (HOST:PORT); default: start a local one.")
]
FormatOption = Annotated[str, typer.Option("--format", help="Output of the kept rows: parquet | jsonl.")]
WorkDirOption = Annotated[
    Path | None, typer.Option(help="Where finished steps are kept for resuming (default: OUT.work).")
]


def run_corpus(source: str, steps: list, out: Path, *, text_column: str, id_column: str | None, executor: str,
               ray_address: str | None, output_format: str, overwrite: bool, work_dir: Path | None = None) -> None:
    """Run the corpus `steps` over `source` into `out` and print what every step kept and dropped."""
    from prunekit.corpus.pipeline import run_pipeline

    result = run_pipeline(source, steps, out, text_column=text_column, id_column=id_column, executor=executor,
                          ray_address=ray_address, output_format=output_format, overwrite=overwrite,
                          work_dir=work_dir, say=stdout.print)
    table = Table(title=f"{source}: kept {result.kept} of {result.rows} rows in {result.seconds:.1f} s "
                  f"({result.rows / max(result.seconds, 1e-9):.0f} rows/s)")
    for column in ("step", "rows in", "kept", "dropped", "seconds"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for record in result.steps[1:]:
        dropped = ", ".join(f"{n} {reason}" for reason, n in record["dropped"].items()) or "0"
        table.add_row(record["step"], str(record["rows"]), str(record["kept"]), dropped, f"{record['seconds']:.1f}")
    stdout.print(table)
    stdout.print(f"kept rows: {out / f'kept.{output_format}'}; every dropped id with its reason: "
                 f"{out / 'excluded.parquet'}")


def data_dedup(
    corpus: CorpusArg,
    out: OutDirOption = ...,
    epsilon: Annotated[float, typer.Option(help="Rows with cosine similarity > 1 - epsilon to an earlier row of "
                                           "their cluster are duplicates.")] = 0.05,
    clusters: Annotated[int | None, typer.Option(help="k-means clusters (default: about sqrt(rows)).")] = None,
    model: Annotated[str, typer.Option(help="Sentence embedding model (offline: all-minilm-l6-v2).")
                     ] = "all-minilm-l6-v2",
    embedding_column: Annotated[
        str | None, typer.Option(help="Use this column's vectors instead of embedding the text.")
    ] = None,
    text_column: TextColumnOption = "text",
    id_column: IdColumnOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    output_format: FormatOption = "parquet",
    work_dir: WorkDirOption = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the k-means fit.")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Semantic deduplication (SemDeDup): embed, cluster with k-means, drop near-duplicates within each cluster.

    Writes kept.parquet (or kept.jsonl), excluded.parquet (every dropped id, its reason, similarity and the id it
    duplicates) and summary.json. Finished steps are kept in OUT.work: a rerun (another --epsilon too) skips them.

      prunekit data dedup corpus.jsonl --epsilon 0.05 --out out/corpus-dedup
    """
    from prunekit.corpus.embed import EmbedStep
    from prunekit.corpus.recipe import dedup_steps
    from prunekit.corpus.step import EMBEDDING

    if embedding_column not in (None, EMBEDDING):
        raise PrunekitError(f"--embedding-column {embedding_column!r}: name the column {EMBEDDING!r} in the input "
                            "(other names are not supported yet)")
    steps = ([] if embedding_column else [EmbedStep(model=model)]) + dedup_steps(epsilon, clusters, seed)
    run_corpus(corpus, steps, out, text_column=text_column, id_column=id_column, executor=executor,
               ray_address=ray_address, output_format=output_format, overwrite=overwrite, work_dir=work_dir)


def data_ppl_filter(
    corpus: CorpusArg,
    out: OutDirOption = ...,
    keep: Annotated[float, typer.Option(help="Fraction of documents kept, in (0, 1].")] = 0.7,
    keep_from: Annotated[str, typer.Option(help="lowest (cleanest text) | middle | highest perplexity.")
                         ] = "lowest",
    model: Annotated[str, typer.Option(help="Reference causal LM (offline name, directory, .gguf or hub id).")
                     ] = "smollm2-135m",
    max_tokens: Annotated[int, typer.Option(help="Tokens scored per document (the rest is cut).")] = 512,
    text_column: TextColumnOption = "text",
    id_column: IdColumnOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    output_format: FormatOption = "parquet",
    work_dir: WorkDirOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Score every document's perplexity under a small reference LM and keep a fraction of them.

      prunekit data ppl-filter corpus.jsonl --keep 0.7 --out out/corpus-ppl70
    """
    from prunekit.corpus.perplexity import PerplexityStep
    from prunekit.corpus.select import ScoreFilter

    steps = [PerplexityStep(model=model, max_tokens=max_tokens), ScoreFilter("perplexity", keep, keep_from)]
    run_corpus(corpus, steps, out, text_column=text_column, id_column=id_column, executor=executor,
               ray_address=ray_address, output_format=output_format, overwrite=overwrite, work_dir=work_dir)
