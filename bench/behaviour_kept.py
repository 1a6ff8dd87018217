"""Behaviour kept: the pruned outputs of two revisions of prunekit, compared bit for bit on the same model.

    .venv/bin/python bench/behaviour_kept.py [--base 5e01db7] [--head REV] [--model smollm2-135m]
        [--calib-samples 8] [--calib-seq-len 128] [--only wanda,sleb,...] [--list] [--device cpu]
        [--threads N] [--keep-differing DIR] [--out bench/results/behaviour_kept.json]

The base revision (and --head REV, when given) is checked out with `git worktree add` into a temporary folder; without
--head the head is a snapshot of this working tree's src/ taken at the start (so edits made while the benchmark runs do
not mix into it). Every configuration runs `python -m prunekit prune MODEL ... --no-eval` twice, once per side, each
in its own process with the same Python (this venv) and PYTHONPATH set to that side's src/, so each side imports
exactly its own prunekit (checked before the first run). Each side has its own PRUNEKIT_CACHE, whose `models`,
`packages` and `text` folders are hard-linked copies of the user's cache ($PRUNEKIT_CACHE, else ~/.cache/prunekit):
nothing is downloaded or converted twice, neither side reuses the other's cached structured scores, and nothing either
side writes reaches the user's cache.

Compared per configuration: every tensor of the *.safetensors files (same names, dtypes, shapes and bytes: -0.0 and
0.0 differ, NaNs compare by bits) and config.json (parsed); the other files beside them (tokenizer, generation config)
are compared byte for byte and reported; prunekit.json and recipe.yaml (timings, paths) are not compared. Prints a
table and writes JSON after every configuration (a stopped run keeps what finished). Exit code 0 when every
configuration run is equal bit for bit, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_BASE = "5e01db7"
NOT_COMPARED = {"prunekit.json", "recipe.yaml"}  # timings, paths and versions: expected to differ
CACHE_PARTS = ("models", "packages", "text")


def configurations() -> dict[str, list[str]]:
    """Every method and pattern prunekit has, as `prunekit prune` arguments (heads sizes are filled in per model)."""
    half = ["--sparsity", "0.5"]
    configs: dict[str, list[str]] = {m: ["--method", m, *half] for m in
                                     ("magnitude", "wanda", "sparsegpt", "gradient", "gblm")}
    for method in ("wanda", "sparsegpt"):
        for pattern in ("2:4", "4:8"):
            configs[f"{method}-{pattern}"] = ["--method", method, "--pattern", pattern]
    configs["wanda-owl"] = ["--method", "wanda", *half, "--allocation", "owl"]
    configs["magnitude-global"] = ["--method", "magnitude", *half, "--allocation", "global"]
    for method in ("block-influence", "angular", "sleb", "block-ppl", "block-taylor", "block-last", "block-random"):
        configs[method] = ["--method", method, "--size", "2"]
    for method in ("activation", "wanda-sp", "flap", "taylor"):
        configs[f"{method}-mlp"] = ["--method", method, "--part", "mlp", "--sparsity", "0.25"]
    configs["flap-heads"] = ["--method", "flap", "--part", "heads"]  # + --size: one query head fewer per KV group
    configs["flap-kv-heads"] = ["--method", "flap", "--part", "kv-heads"]  # + --size: one KV group fewer
    configs["wanda-stream"] = ["--method", "wanda", *half, "--stream"]
    return configs


# ---------------------------------------------------------------- sides


@dataclass
class Side:
    name: str  # base | head
    label: str  # what it is: a commit, or the working tree at a commit
    src: Path
    cache: Path
    outputs: Path
    python: str
    threads: int | None
    worktree: Path | None = None
    notes: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
        env.update(PYTHONPATH=str(self.src), PRUNEKIT_CACHE=str(self.cache), PYTHONHASHSEED="0",
                   PYTHONDONTWRITEBYTECODE="1", TQDM_DISABLE="1", COLUMNS="120", NO_COLOR="1")
        if self.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(self.threads)
        return env

    def check_import(self) -> str:
        """The prunekit this side imports must be the one under its src/ (not the venv's editable install)."""
        code = "import prunekit, sys; sys.stdout.write(prunekit.__file__)"
        done = subprocess.run([self.python, "-c", code], env=self.env(), cwd=self.outputs, capture_output=True,
                              text=True, check=False)
        where = Path(done.stdout.strip() or "?").resolve()
        if done.returncode or not where.is_relative_to(self.src.resolve()):
            raise SystemExit(f"{self.name}: prunekit imported from {where}, not from {self.src}: "
                             f"{(done.stderr.strip().splitlines() or [''])[-1]}")
        return str(where)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def resolve(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"error: {rev!r} is not a commit of {REPO}") from None


def add_worktree(rev: str, where: Path) -> Path:
    git("worktree", "add", "--detach", str(where), rev)
    return where


def remove_worktree(where: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)], capture_output=True,
                   check=False)
    shutil.rmtree(where, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True, check=False)


def user_cache() -> Path:
    root = os.environ.get("PRUNEKIT_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "prunekit"


def link_tree(source: Path, target: Path) -> None:
    """A copy of `source` made of hard links (a plain copy across file systems); prunekit replaces cached files by
    renaming, so a side that rewrites its copy never changes the user's files."""
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir() and not path.is_symlink():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def make_cache(target: Path, source: Path) -> None:
    target.mkdir(parents=True)
    for part in CACHE_PARTS:
        if (source / part).is_dir():
            link_tree(source / part, target / part)


def head_counts(model: str) -> tuple[int, int] | None:
    """(query heads, KV heads) from the model's config.json: a local directory, or the cached offline model."""
    for directory in (Path(model).expanduser(), user_cache() / "models" / model):
        try:
            config = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            continue
        config = config.get("text_config", config)
        heads = config.get("num_attention_heads")
        if isinstance(heads, int):
            return heads, config.get("num_key_value_heads") or heads
    return None


def heads_size(name: str, counts: tuple[int, int] | None) -> list[str] | str:
    """`--size` for the heads configurations, or why the model does not allow it."""
    if counts is None:
        return "the model's config.json was not found: head counts unknown"
    heads, kv = counts
    if name == "flap-heads":
        if heads // kv < 2:
            return f"{heads} query heads on {kv} KV heads: one per group, none can go"
        return ["--size", str(heads - kv)]
    if kv < 2:
        return f"{kv} KV head: there is no group to remove"
    return ["--size", str(kv - 1)]


# ---------------------------------------------------------------- runs and comparisons


def run_side(side: Side, name: str, model: str, args: list[str], common: list[str]) -> dict[str, Any]:
    out = side.outputs / name
    log = side.outputs / f"{name}.log"
    command = [side.python, "-m", "prunekit", "prune", model, *args, *common, "--out", str(out)]
    started = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, env=side.env(), cwd=side.outputs, stdout=f, stderr=subprocess.STDOUT,
                              check=False)
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    result: dict[str, Any] = {"rc": done.returncode, "seconds": round(seconds, 2), "out": out}
    if done.returncode:
        result["error"] = lines[-1] if lines else f"exit code {done.returncode}"
    if "converting" in text and "to safetensors" in text:
        result["converted"] = True
    return result


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def load_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(directory / name))
    return tensors, files


def compare(base: Path, head: Path) -> dict[str, Any]:
    """Tensors bit for bit, config.json parsed, the other files byte for byte."""
    a, files_a = load_tensors(base)
    b, files_b = load_tensors(head)
    names = sorted(set(a) | set(b))
    equal = 0
    value_equal_only: list[str] = []  # torch.equal holds but the bits differ (sign of zero, NaN payloads)
    differing: list[dict[str, Any]] = []
    max_abs = 0.0
    for key in names:
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            differing.append({"tensor": key, "why": "only in " + ("head" if x is None else "base")})
            continue
        if x.dtype != y.dtype or x.shape != y.shape:
            differing.append({"tensor": key, "why": f"{x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)}"})
            continue
        if torch.equal(bits(x), bits(y)):
            equal += 1
            continue
        row: dict[str, Any] = {"tensor": key}
        if torch.equal(x, y):
            value_equal_only.append(key)
            row["why"] = "equal values, different bits (sign of zero or NaN)"
        elif x.is_floating_point():
            diff = (x.double() - y.double()).abs()
            diff = diff[~torch.isnan(diff)]
            row["max_abs_diff"] = float(diff.max()) if diff.numel() else float("nan")
            row["elements_differing"] = int((x != y).sum())
            max_abs = max(max_abs, row["max_abs_diff"])
        else:
            row["elements_differing"] = int((x != y).sum())
        differing.append(row)
    config_a, config_b = (json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else None
                          for d in (base, head))
    other = sorted({p.name for d in (base, head) for p in d.iterdir() if p.is_file()}
                   - NOT_COMPARED - {"config.json"} - set(files_a) - set(files_b))
    other_differ = [n for n in other if not ((base / n).is_file() and (head / n).is_file()
                                             and (base / n).read_bytes() == (head / n).read_bytes())]
    config_diff = {} if config_a == config_b else {
        k: [(config_a or {}).get(k), (config_b or {}).get(k)]
        for k in sorted(set(config_a or {}) | set(config_b or {}))
        if (config_a or {}).get(k) != (config_b or {}).get(k)}
    return {"tensors": len(names), "tensors_equal": equal, "max_abs_diff": max_abs if differing else 0.0,
            "differing": differing[:50], "differing_count": len(differing), "value_equal_only": value_equal_only,
            "safetensors_files": [files_a, files_b], "config_equal": config_a == config_b and config_a is not None,
            "config_diff": config_diff, "other_files_differ": other_differ,
            "equal": equal == len(names) and len(names) > 0 and config_a == config_b and config_a is not None}


# ---------------------------------------------------------------- output


def fmt_row(row: dict[str, Any]) -> str:
    base, head = row.get("base", {}), row.get("head", {})
    seconds = f"{base.get('seconds', 0):8.1f} {head.get('seconds', 0):8.1f}" if base else f"{'-':>8s} {'-':>8s}"
    if "comparison" in row:
        c = row["comparison"]
        tensors = f"{c['tensors_equal']}/{c['tensors']}"
        diff = "-" if c["tensors_equal"] == c["tensors"] else f"{c['max_abs_diff']:.3g}"
        config = "equal" if c["config_equal"] else "DIFFERS"
    else:
        tensors, diff, config = "-", "-", "-"
    return f"{row['name']:18s} {tensors:>9s} {diff:>10s} {config:>8s} {seconds}  {row['status']}"


def status_of(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    base, head = row["base"], row["head"]
    if base["rc"] or head["rc"]:
        if base["rc"] and head["rc"] and base.get("error") == head.get("error"):
            return f"both failed alike: {base['error']}"
        return "; ".join(f"{n} failed: {s['error']}" for n, s in (("base", base), ("head", head)) if s["rc"])
    c = row["comparison"]
    if c["equal"]:
        status = "EQUAL bit for bit"
    elif c["value_equal_only"] and c["differing_count"] == len(c["value_equal_only"]):
        status = f"DIFFERS in bits only ({len(c['value_equal_only'])} tensors: sign of zero / NaN)"
    else:
        status = f"DIFFERS ({c['differing_count']} tensors)"
    if c["other_files_differ"]:
        status += f"; other files differ: {', '.join(c['other_files_differ'])}"
    return status


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: ({kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()} if isinstance(v, dict)
                else v) for k, v in row.items()}


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**meta, "rows": [jsonable(r) for r in rows]}, indent=2) + "\n")
    tmp.replace(path)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"revision to compare against (default {DEFAULT_BASE})")
    parser.add_argument("--head", default=None, help="revision to compare (default: this working tree's src/)")
    parser.add_argument("--model", default="smollm2-135m", help="offline model name or a local model directory")
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-seq-len", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="passed to every run (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of every run (default: torch's)")
    parser.add_argument("--only", default=None, help="comma list of configuration names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--keep-differing", type=Path, default=None,
                        help="move both outputs of a differing configuration into DIR/NAME/{base,head}")
    parser.add_argument("--out", type=Path, default=RESULTS / "behaviour_kept.json")
    args = parser.parse_args()

    configs = configurations()
    if args.list:
        for name, cli in configs.items():
            print(f"{name:18s} {' '.join(cli)}")
        return 0
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in configs]
        if unknown:
            parser.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(configs)}")
        configs = {n: configs[n] for n in wanted}
    if args.calib_samples < 1 or args.calib_seq_len < 2:
        parser.error("--calib-samples must be >= 1 and --calib-seq-len >= 2")
    out_path = args.out.resolve()
    model = str(Path(args.model).resolve()) if Path(args.model).expanduser().exists() else args.model
    base_sha = resolve(args.base)
    head_sha = resolve(args.head) if args.head else resolve("HEAD")
    dirty = bool(git("status", "--porcelain", "--", "src")) if not args.head else False

    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="behaviour_kept-"))
    sides: list[Side] = []
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    meta: dict[str, Any] = {}
    try:
        for name in ("base", "head"):
            (root / name / "outputs").mkdir(parents=True)
            make_cache(root / name / "cache", user_cache())
        base = Side("base", f"{args.base} ({base_sha[:12]})", Path(), root / "base" / "cache",
                    root / "base" / "outputs", sys.executable, args.threads)
        sides.append(base)
        base.worktree = root / "base" / "tree"  # set first: an interrupted `git worktree add` is removed too
        base.src = add_worktree(base_sha, base.worktree) / "src"
        if args.head:
            head = Side("head", f"{args.head} ({head_sha[:12]})", Path(), root / "head" / "cache",
                        root / "head" / "outputs", sys.executable, args.threads)
            sides.append(head)
            head.worktree = root / "head" / "tree"
            head.src = add_worktree(head_sha, head.worktree) / "src"
        else:
            snapshot = root / "head" / "src"
            shutil.copytree(REPO / "src", snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            head = Side("head", f"working tree at {head_sha[:12]}{' + uncommitted changes in src/' if dirty else ''}",
                        snapshot, root / "head" / "cache", root / "head" / "outputs", sys.executable, args.threads)
            sides.append(head)
        imported = {s.name: s.check_import() for s in sides}
        common = ["--no-eval", "--calib-samples", str(args.calib_samples), "--calib-seq-len", str(args.calib_seq_len),
                  "--device", args.device]
        meta = {"model": args.model, "base": base.label, "head": head.label, "base_commit": base_sha,
                "head_commit": head_sha, "head_src_dirty": dirty, "calibration": [args.calib_samples,
                                                                                  args.calib_seq_len],
                "device": args.device, "threads": args.threads or torch.get_num_threads(),
                "common_args": common, "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
                "imported_from": imported, "finished": False}
        print(f"{args.model}: base {base.label} vs head {head.label}; calibration {args.calib_samples} x "
              f"{args.calib_seq_len} tokens, {len(configs)} configurations", flush=True)
        counts = head_counts(model)
        for name, cli in configs.items():
            row: dict[str, Any] = {"name": name, "args": cli}
            if name in ("flap-heads", "flap-kv-heads"):
                size = heads_size(name, counts)
                if isinstance(size, str):
                    row["skipped"] = size
                    row["status"] = status_of(row)
                    rows.append(row)
                    print(fmt_row(row), flush=True)
                    continue
                cli = row["args"] = [*cli, *size]
            row["base"] = run_side(base, name, model, cli, common)
            row["head"] = run_side(head, name, model, cli, common)
            outs = [row[s.name].pop("out") for s in sides]
            if not (row["base"]["rc"] or row["head"]["rc"]):
                row["comparison"] = compare(*outs)
                if counts is None and (outs[0] / "config.json").exists():
                    counts = head_counts(str(outs[0]))  # weight methods keep the config: learn the head counts
            for s in sides:
                if row[s.name].pop("converted", False):
                    s.notes.append(f"{name}: the {s.name} converted the cached model (again)")
            row["status"] = status_of(row)
            if args.keep_differing and not row.get("comparison", {}).get("equal"):
                for s, o in zip(sides, outs, strict=True):
                    if o.exists():
                        (args.keep_differing / name).mkdir(parents=True, exist_ok=True)
                        shutil.move(str(o), args.keep_differing / name / s.name)
            for o in outs:
                shutil.rmtree(o, ignore_errors=True)
            rows.append(row)
            print(fmt_row(row), flush=True)
            meta["wall_seconds"] = round(time.perf_counter() - started, 1)
            meta["notes"] = [n for s in sides for n in s.notes]
            write_json(out_path, meta, rows)
        meta["finished"] = True
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e or 'Ctrl-C'}): {len(rows)} of {len(configs)} configurations finished",
              file=sys.stderr)
    finally:
        for s in sides:
            if s.worktree is not None:
                remove_worktree(s.worktree)
        shutil.rmtree(root, ignore_errors=True)
    if meta:
        meta["wall_seconds"] = round(time.perf_counter() - started, 1)
        meta["notes"] = [n for s in sides for n in s.notes]
        write_json(out_path, meta, rows)

    print(f"\n{meta.get('model')}: base {meta.get('base')} vs head {meta.get('head')}")
    print(f"{'configuration':18s} {'tensors':>9s} {'max |diff|':>10s} {'config':>8s} {'base s':>8s} {'head s':>8s}"
          "  status")
    for row in rows:
        print(fmt_row(row))
    for note in meta.get("notes", []):
        print(f"note: {note}")
    ran = [r for r in rows if "skipped" not in r]
    kept = [r for r in ran if r.get("comparison", {}).get("equal")]
    print(f"{len(kept)} of {len(ran)} configurations equal bit for bit"
          f"{f', {len(rows) - len(ran)} skipped' if len(rows) > len(ran) else ''}; "
          f"wall {meta.get('wall_seconds', 0):.0f}s; wrote {out_path}")
    return 0 if meta.get("finished") and ran and len(kept) == len(ran) else 1


if __name__ == "__main__":
    sys.exit(main())
