"""Quality of the text-corpus pruning steps on corpora with a known answer: semantic dedup and the perplexity filter.

    .venv/bin/python bench/corpus_quality.py [--only dedup|ppl] [--docs 3000] [--epsilons 0.02,0.05,0.1,0.15,0.2]
        [--ppl-docs 600] [--keeps 0.7,0.5] [--batch-tokens 2048] [--work /tmp/prunekit-corpus-quality] [--json PATH]

Dedup: paragraphs of the offline English Wikipedia (both splits; paragraph ends from the task's labels) of
--min-chars..--max-chars characters (the upper bound keeps them within MiniLM's 256 tokens, so an edit near the end
is seen by the embedder), shuffled, capped at --docs. Near-duplicates of a random --dup-rate of them are planted, an
equal share of each kind: `edit` (about 4% of the words deleted, swapped with a neighbour or replaced by another word
of the text), `shuffle` (sentence order permuted), `truncate` (first 80-90% kept, cut at a word). Each copy and its
source form a group; a dropped id is correct when another member of its group was kept. recall = correct drops /
copies; precision per kind counts the drops inside that kind's groups, overall precision every drop (unplanted
paragraphs included: those may be real near-duplicates in Wikipedia, examples are printed). Embed + cluster +
semdedup run once; each further epsilon reruns the pipeline, which skips the finished steps and redoes the filter.

Perplexity: SmolLM2-135M perplexity (first 256 tokens) then keep the lowest --keeps fraction. Two mixes of
--ppl-docs documents: Wikipedia paragraphs, --clean-share clean and the rest corrupted (`shuffled` words; `garbage`:
mojibake plus ~30% of the characters replaced by random bytes read as latin-1; `mixed`: first half clean, second half
words shuffled with some garbage), and BIG-bench real_or_fake_text (gpt2_xl): per example, either the human-written
sentences before the boundary or the GPT-2 XL continuation after it (at least 3 sentences, one document per source
article, half of each). Reports the share of clean / human text among the kept rows against the base rate.

Work files go under --work (the corpus files are rewritten only when their content changes, so a rerun reuses the
embeddings and perplexities). Prints tables and writes bench/results/corpus_quality.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import extract_member, fetch_package
from prunekit.assets.registry import BIGBENCH
from prunekit.corpus.embed import EmbedStep
from prunekit.corpus.perplexity import PerplexityStep
from prunekit.corpus.pipeline import run_pipeline
from prunekit.corpus.recipe import dedup_steps
from prunekit.corpus.select import ScoreFilter
from prunekit.text.sources import wikipedia_articles

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("edit", "shuffle", "truncate")
CORRUPTIONS = ("shuffled", "garbage", "mixed")
ROF_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/real_or_fake_text/{}/task.json"


# --- corpora --------------------------------------------------------------------------------------------------------


def wikipedia_paragraphs(min_chars: int, max_chars: int) -> list[list[str]]:
    """Paragraphs (as lists of sentences) of both Wikipedia splits, within the length bounds.

    `wikipedia_articles` gives one sentence per line and no paragraph breaks; the task's `target` labels the
    paragraph-ending sentences, so read them from the same cached task file (it exists once the articles were read).
    """
    articles = set(wikipedia_articles("calibration")) | set(wikipedia_articles("evaluation"))
    labels = {e["input"]: e.get("target", "") for e in
              json.loads((cache_dir() / "text" / "wikipedia.json").read_text())["examples"]}
    paragraphs: list[list[str]] = []
    for article in sorted(articles):
        lines = [line.strip() for line in article.split("\n") if line.strip()]
        ends = labels.get(article, "").split()
        if len(ends) != len(lines):  # no usable labels: one paragraph per blank-line block
            ends = ["0"] * (len(lines) - 1) + ["1"]
        current: list[str] = []
        for line, end in zip(lines, ends, strict=True):
            current.append(line)
            if end == "1":
                paragraphs.append(current)
                current = []
        if current:
            paragraphs.append(current)
    unique = {" ".join(p): p for p in paragraphs}  # exact repeats would blur the planted ground truth
    return [p for text, p in sorted(unique.items()) if min_chars <= len(text) <= max_chars]


def light_edit(text: str, rng: random.Random, fraction: float = 0.04) -> str:
    """Change about `fraction` of the words: delete one, swap it with its neighbour or replace it by another word."""
    words = text.split()
    vocabulary = list(words)
    for _ in range(max(1, round(fraction * len(words)))):
        i = rng.randrange(len(words) - 1)
        action = rng.choice(("delete", "swap", "replace"))
        if action == "delete":
            del words[i]
        elif action == "swap":
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            words[i] = rng.choice(vocabulary)
    return " ".join(words)


def shuffled_sentences(sentences: list[str], rng: random.Random) -> str:
    order = list(range(len(sentences)))
    while len(sentences) > 1 and order == sorted(order):  # a real permutation, never the original order
        rng.shuffle(order)
    return " ".join(sentences[i] for i in order)


def truncated(text: str, rng: random.Random) -> str:
    cut = int(len(text) * rng.uniform(0.8, 0.9))
    return text[: text.rfind(" ", 0, cut) if " " in text[:cut] else cut].rstrip()


def near_copy(sentences: list[str], kind: str, rng: random.Random) -> str:
    text = " ".join(sentences)
    if kind == "edit":
        return light_edit(text, rng)
    if kind == "shuffle":
        return shuffled_sentences(sentences, rng)
    return truncated(text, rng)


def dedup_corpus(docs: int, dup_rate: float, min_chars: int, max_chars: int, seed: int) -> tuple[list[dict], dict]:
    """(rows with id and text, truth) where truth maps id -> {"group", "kind", "role"} for planted groups."""
    rng = random.Random(seed)
    paragraphs = wikipedia_paragraphs(min_chars, max_chars)
    rng.shuffle(paragraphs)
    paragraphs = paragraphs[:docs]
    # Sources: shuffle-kind ones need two sentences or more, so draw those first from the multi-sentence pool.
    copies = round(dup_rate * len(paragraphs))
    per_kind = [copies // len(KINDS) + (k < copies % len(KINDS)) for k in range(len(KINDS))]
    candidates = list(range(len(paragraphs)))
    rng.shuffle(candidates)
    multi = [i for i in candidates if len(paragraphs[i]) > 1][: per_kind[KINDS.index("shuffle")]]
    rest = [i for i in candidates if i not in set(multi)]
    sources = {"shuffle": multi}
    start = 0
    for kind, count in zip(KINDS, per_kind, strict=True):
        if kind != "shuffle":
            sources[kind] = rest[start : start + count]
            start += count
    items: list[tuple[str, dict | None]] = [(" ".join(p), None) for p in paragraphs]
    for kind in KINDS:
        for group, i in enumerate(sources[kind]):
            key = f"{kind}-{group}"
            items[i] = (items[i][0], {"group": key, "kind": kind, "role": "source"})
            items.append((near_copy(paragraphs[i], kind, rng), {"group": key, "kind": kind, "role": "copy"}))
    rng.shuffle(items)  # ids carry no hint of which is the copy
    rows, truth = [], {}
    for n, (text, planted) in enumerate(items):
        rows.append({"id": f"doc-{n:05d}", "text": text})
        if planted:
            truth[rows[-1]["id"]] = planted
    return rows, truth


def garbage(text: str, rng: random.Random, share: float) -> str:
    """Mojibake (UTF-8 read as latin-1), then runs of random bytes read as latin-1 over about `share` of it."""
    chars = list(text.encode("utf-8").decode("latin-1"))
    alphabet = [chr(b) for b in (*range(0x21, 0x7F), *range(0xA0, 0x100))]  # printable latin-1, no C1 controls
    target, done = share * len(chars), 0
    while done < target:
        start, length = rng.randrange(len(chars)), rng.randint(8, 24)
        chars[start : start + length] = [rng.choice(alphabet) for _ in chars[start : start + length]]
        done += length
    return "".join(chars)


def corrupt(text: str, kind: str, rng: random.Random) -> str:
    words = text.split()
    if kind == "shuffled":
        rng.shuffle(words)
        return " ".join(words)
    if kind == "garbage":
        return garbage(text, rng, 0.3)
    half = len(words) // 2
    tail = words[half:]
    rng.shuffle(tail)
    return " ".join(words[:half]) + " " + garbage(" ".join(tail), rng, 0.3)


def wiki_mix(docs: int, clean_share: float, min_chars: int, max_chars: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    paragraphs = [" ".join(p) for p in wikipedia_paragraphs(min_chars, max_chars)]
    rng.shuffle(paragraphs)
    clean = round(clean_share * docs)
    rows = [{"text": t, "label": "clean"} for t in paragraphs[:clean]]
    for n, text in enumerate(paragraphs[clean:docs]):
        kind = CORRUPTIONS[n % len(CORRUPTIONS)]
        rows.append({"text": corrupt(text, kind, rng), "label": kind})
    rng.shuffle(rows)
    return [{"id": f"doc-{n:05d}", **r} for n, r in enumerate(rows)]


def real_or_fake(docs: int, subtask: str, seed: int) -> list[dict]:
    """Half human-written, half GPT-2 segments of the real_or_fake_text examples (>= 3 sentences each), balanced
    within each source dataset (recipes, news and stories differ in perplexity far more than human and machine)."""
    path = cache_dir() / "text" / f"real_or_fake_text_{subtask}.json"
    if not path.exists():
        extract_member(fetch_package(BIGBENCH), ROF_MEMBER.format(subtask), path)
    examples = json.loads(path.read_text())["examples"]
    rng = random.Random(seed)
    rng.shuffle(examples)
    rows: list[dict] = []
    counts: Counter = Counter()
    seen: set[str] = set()
    for e in examples:
        # target_scores lists the sentences in order; 1.0 marks the first machine-generated one.
        sentences, scores = list(e["target_scores"]), list(e["target_scores"].values())
        if 1.0 not in scores or sentences[0] in seen:
            continue
        boundary = scores.index(1.0)
        parts = {"human": sentences[:boundary], "machine": sentences[boundary:]}
        meta = e.get("meta", {})
        dataset = str(meta.get("dataset", ""))
        eligible = [k for k in ("human", "machine") if len(parts[k]) >= 3]
        if not eligible:
            continue
        label = min(eligible, key=lambda k: (counts[dataset, k], rng.random()))  # the rarer label in this dataset
        counts[dataset, label] += 1
        seen.add(sentences[0])  # one document per source article
        rows.append({"text": " ".join(s.strip() for s in parts[label]), "label": label, "dataset": dataset,
                     "top_p": meta.get("p")})
        if len(rows) == docs:
            break
    rng.shuffle(rows)
    return [{"id": f"doc-{n:05d}", **r} for n, r in enumerate(rows)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """Write only when the content changed: the pipeline fingerprints the file's mtime, and reuse saves the model."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def step_seconds(out: Path) -> dict[str, float]:
    summary = json.loads((out / "summary.json").read_text())
    return {s["step"]: s["seconds"] for s in summary["steps"]}


# --- dedup ----------------------------------------------------------------------------------------------------------


def dedup_quality(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    rows, truth = dedup_corpus(args.docs, args.dup_rate, args.min_chars, args.max_chars, args.seed)
    texts = {r["id"]: r["text"] for r in rows}
    folder = args.work / "dedup"
    source = write_jsonl(rows, folder / "corpus.jsonl")
    copies = Counter(t["kind"] for t in truth.values() if t["role"] == "copy")
    print(f"dedup corpus: {len(rows)} paragraphs, {sum(copies.values())} planted copies {dict(copies)}", flush=True)
    members: dict[str, list[str]] = {}
    for i, t in truth.items():
        members.setdefault(t["group"], []).append(i)

    results, seconds = [], {}
    for eps in sorted(args.epsilons):
        out = folder / f"out-eps{eps:g}"
        run_started = time.perf_counter()
        run_pipeline(source, [EmbedStep(), *dedup_steps(eps, clusters=None, seed=args.seed)], out,
                     id_column="id", work_dir=folder / "work", overwrite=True)
        seconds[f"{eps:g}"] = {"wall": round(time.perf_counter() - run_started, 1), **step_seconds(out)}
        excluded = pq.read_table(out / "excluded.parquet").to_pylist()
        dropped = {r["id"] for r in excluded}
        kept = set(pq.read_table(out / "kept.parquet", columns=["id"]).column("id").to_pylist())
        results.append(score_dedup(eps, dropped, kept, truth, members, copies))
    similarity = semdedup_output(folder / "work")
    for r in results:  # the filter must agree with the stored similarities
        expected = {i for i, (s, _) in similarity.items() if s is not None and s > 1 - r["epsilon"]}
        r["matches_stored_similarity"] = expected == set(r["_dropped"])
    examples = false_positive_examples(results[-1], truth, similarity, texts)
    for r in results:
        del r["_dropped"]
    report = {"docs": len(rows), "planted": dict(copies), "clusters": round(len(rows) ** 0.5), "by_epsilon": results,
              "false_positive_examples": examples, "seconds": seconds,
              "total_seconds": round(time.perf_counter() - started, 1)}
    print_dedup(report)
    return report


def score_dedup(eps: float, dropped: set[str], kept: set[str], truth: dict, members: dict, copies: Counter) -> dict:
    by_kind = {}
    correct_total = 0
    for kind in KINDS:
        groups = [g for g, ids in members.items() if truth[ids[0]]["kind"] == kind]
        in_groups = [i for g in groups for i in members[g] if i in dropped]
        correct = [i for i in in_groups if any(j in kept for j in members[truth[i]["group"]] if j != i)]
        lost = sum(all(i in dropped for i in members[g]) for g in groups)
        correct_total += len(correct)
        by_kind[kind] = {"copies": copies[kind], "dropped": len(in_groups), "correct": len(correct),
                         "precision": len(correct) / len(in_groups) if in_groups else None,
                         "recall": len(correct) / copies[kind] if copies[kind] else None, "groups_all_dropped": lost}
    unplanted = sorted(i for i in dropped if i not in truth)
    total = sum(copies.values())
    return {"epsilon": eps, "threshold": 1 - eps, "dropped": len(dropped), "correct": correct_total,
            "precision": correct_total / len(dropped) if dropped else None,
            "recall": correct_total / total if total else None, "unplanted_dropped": len(unplanted),
            "by_kind": by_kind, "_dropped": sorted(dropped)}


def semdedup_output(work: Path) -> dict[str, tuple[float | None, str | None]]:
    """id -> (dup_similarity, dup_of) from the semdedup stage's stored rows."""
    stage = sorted(work.glob("[0-9][0-9]-semdedup"))[-1]
    table = ds.dataset(stage / "kept", format="parquet").to_table(columns=["id", "dup_similarity", "dup_of"])
    return {i: (s, d) for i, s, d in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)}


def false_positive_examples(result: dict, truth: dict, similarity: dict, texts: dict[str, str],
                            count: int = 3) -> list[dict]:
    """Unplanted drops at the largest epsilon: the most, the median and the least similar."""
    unplanted = sorted((similarity[i][0], i) for i in result["_dropped"] if i not in truth)
    picks = sorted({0, len(unplanted) // 2, len(unplanted) - 1}) if unplanted else []
    return [{"epsilon": result["epsilon"], "id": unplanted[p][1], "similarity": round(unplanted[p][0], 4),
             "text": texts[unplanted[p][1]], "duplicate_of": similarity[unplanted[p][1]][1],
             "duplicate_text": texts[similarity[unplanted[p][1]][1]]} for p in picks[:count]]


def print_dedup(report: dict) -> None:
    print(f"\nsemantic dedup on {report['docs']} Wikipedia paragraphs ({report['clusters']} clusters), planted "
          f"copies {report['planted']}")
    print(f"{'epsilon':>7} {'kind':9} {'copies':>6} {'dropped':>7} {'correct':>7} {'precision':>9} {'recall':>7}"
          f"  {'unplanted dropped':>17}")
    fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731 - a local formatter
    for r in report["by_epsilon"]:
        for kind, k in r["by_kind"].items():
            print(f"{r['epsilon']:>7g} {kind:9} {k['copies']:>6} {k['dropped']:>7} {k['correct']:>7} "
                  f"{fmt(k['precision']):>9} {fmt(k['recall']):>7}")
        print(f"{r['epsilon']:>7g} {'all':9} {sum(k['copies'] for k in r['by_kind'].values()):>6} {r['dropped']:>7} "
              f"{r['correct']:>7} {fmt(r['precision']):>9} {fmt(r['recall']):>7}  {r['unplanted_dropped']:>17}"
              f"{'' if r['matches_stored_similarity'] else '  (differs from stored similarity!)'}")
    for e in report["false_positive_examples"]:
        print(f"\nunplanted drop at epsilon {e['epsilon']:g}, similarity {e['similarity']:.4f}:\n  {e['id']}: "
              f"{e['text'][:240]}...\n  kept {e['duplicate_of']}: {e['duplicate_text'][:240]}...")
    step = report["seconds"][min(report["seconds"], key=float)]
    print(f"\nseconds: first run {step['wall']} (embed {step.get('embed')}, cluster {step.get('cluster')}, semdedup "
          f"{step.get('semdedup')}); each further epsilon {[v['wall'] for v in report['seconds'].values()][1:]}; "
          f"dedup part {report['total_seconds']}")


# --- perplexity -----------------------------------------------------------------------------------------------------


def perplexity_filter(name: str, rows: list[dict], good: str, args: argparse.Namespace) -> dict:
    """Run the perplexity filter at each keep; the share of `good`-labelled rows among the kept ones."""
    started = time.perf_counter()
    folder = args.work / f"ppl-{name}"
    source = write_jsonl(rows, folder / "corpus.jsonl")
    labels = {r["id"]: r["label"] for r in rows}
    base = Counter(labels.values())
    runs, kept_sets = [], {}
    for keep in args.keeps:
        out = folder / f"out-keep{keep:g}"
        scorer = PerplexityStep(max_tokens=args.max_tokens, batch_tokens=args.batch_tokens)
        run_pipeline(source, [scorer, ScoreFilter("perplexity", keep, "lowest")], out, id_column="id",
                     work_dir=folder / "work", overwrite=True)
        kept_sets[f"{keep:g}"] = set(pq.read_table(out / "kept.parquet", columns=["id"]).column("id").to_pylist())
        counts = Counter(labels[i] for i in kept_sets[f"{keep:g}"])
        kept = len(kept_sets[f"{keep:g}"])
        runs.append({"keep": keep, "kept": kept, "good_share_kept": counts[good] / kept if kept else None,
                     "kept_by_label": {k: counts[k] for k in base},
                     "dropped_by_label": {k: base[k] - counts[k] for k in base}, "seconds": step_seconds(out)})
    stage = sorted(folder.glob("work/[0-9][0-9]-perplexity"))[-1]
    scored = ds.dataset(stage / "kept", format="parquet").to_table(columns=["id", "perplexity"])
    perplexity = dict(zip(*(scored.column(c).to_pylist() for c in ("id", "perplexity")), strict=True))
    # Length matters to perplexity (short texts score higher), so show it beside the medians.
    report = {"docs": len(rows), "good_label": good, "base": dict(base), "base_rate": base[good] / len(rows),
              "median_perplexity": {k: statistics.median(v for i, v in perplexity.items() if labels[i] == k and v)
                                    for k in base},
              "median_chars": {k: statistics.median(len(r["text"]) for r in rows if r["label"] == k) for k in base},
              "runs": runs, "breakdowns": {}, "seconds": round(time.perf_counter() - started, 1)}
    if "top_p" in rows[0]:
        report["breakdowns"]["machine docs by GPT-2 top-p"] = breakdown(
            rows, kept_sets, lambda r: f"top_p {r['top_p']}" if r["label"] == "machine" else None)
        report["breakdowns"]["by source dataset and label"] = breakdown(
            rows, kept_sets, lambda r: f"{r['dataset']} {r['label']}")
    print_perplexity(name, report)
    return report


def breakdown(rows: list[dict], kept_sets: dict[str, set], key: Callable[[dict], str | None]) -> dict:
    """Per group key: documents and how many each keep fraction kept."""
    out: dict = {}
    for r in rows:
        group = key(r)
        if group is None:
            continue
        entry = out.setdefault(group, {"docs": 0, "kept": dict.fromkeys(kept_sets, 0)})
        entry["docs"] += 1
        for keep, ids in kept_sets.items():
            entry["kept"][keep] += r["id"] in ids
    return dict(sorted(out.items()))


def print_perplexity(name: str, report: dict) -> None:
    good, labels = report["good_label"], list(report["base"])
    print(f"\nperplexity filter on {name}: {report['docs']} docs {report['base']}, {good} base rate "
          f"{report['base_rate']:.3f}")
    print("median perplexity " + ", ".join(f"{k} {v:.1f}" for k, v in report["median_perplexity"].items()) +
          "; median characters " + ", ".join(f"{k} {v:.0f}" for k, v in report["median_chars"].items()))
    print(f"{'keep':>5} {'kept':>5} {good + ' share kept':>18} {'vs base':>8}  " +
          " ".join(f"{'dropped ' + k:>16}" for k in labels))
    for r in report["runs"]:
        share = r["good_share_kept"]
        print(f"{r['keep']:>5g} {r['kept']:>5} {share:>18.3f} {share - report['base_rate']:>+8.3f}  " +
              " ".join(f"{str(r['dropped_by_label'][k]) + '/' + str(report['base'][k]):>16}" for k in labels))
    for title, groups in report["breakdowns"].items():
        keeps = [f"{r['keep']:g}" for r in report["runs"]]
        print(f"{title:30} {'docs':>5} " + " ".join(f"{'kept @' + k:>9}" for k in keeps))
        for group, entry in groups.items():
            print(f"{group:30} {entry['docs']:>5} " + " ".join(f"{entry['kept'][k]:>9}" for k in keeps))


# --- main -----------------------------------------------------------------------------------------------------------


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("dedup", "ppl"), default=None, help="run one measurement")
    parser.add_argument("--docs", type=int, default=3000, help="dedup: Wikipedia paragraphs before planting")
    parser.add_argument("--dup-rate", type=float, default=0.1, help="dedup: share of paragraphs given a copy")
    parser.add_argument("--epsilons", type=floats, default=[0.02, 0.05, 0.1, 0.15, 0.2])
    parser.add_argument("--min-chars", type=int, default=300)
    parser.add_argument("--max-chars", type=int, default=1000, help="longer paragraphs exceed MiniLM's 256 tokens")
    parser.add_argument("--ppl-docs", type=int, default=600, help="documents per perplexity mix")
    parser.add_argument("--clean-share", type=float, default=0.7, help="clean share of the Wikipedia mix")
    parser.add_argument("--keeps", type=floats, default=[0.7, 0.5], help="fractions the perplexity filter keeps")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens scored per document")
    # PerplexityStep sizes a batch by its shortest document and pads to its longest, so a batch can hold several
    # times batch_tokens; at the default 8192 the real-or-fake mix reached ~41k tokens (7.5 GiB of logits) and the
    # process was killed for memory. 2048 keeps the largest batch under ~5k tokens here, at the same speed.
    parser.add_argument("--batch-tokens", type=int, default=2048, help="PerplexityStep batch_tokens")
    parser.add_argument("--rof-subtask", choices=("gpt2_xl", "gpt2"), default="gpt2_xl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prunekit-corpus-quality"))
    parser.add_argument("--json", type=Path, default=RESULTS / "corpus_quality.json")
    args = parser.parse_args()

    report: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if args.only in (None, "dedup"):
        report["dedup"] = dedup_quality(args)
    if args.only in (None, "ppl"):
        wiki = wiki_mix(args.ppl_docs, args.clean_share, args.min_chars, args.max_chars, args.seed + 1)
        report["perplexity_wikipedia"] = perplexity_filter("wikipedia", wiki, "clean", args)
        rof = real_or_fake(args.ppl_docs, args.rof_subtask, args.seed)
        report["perplexity_real_or_fake"] = perplexity_filter("real-or-fake", rof, "human", args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
