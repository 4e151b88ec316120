"""Server text-path throughput: the prefix-cached, EOT-cut fast path against the naive full-context path.

What is measured
----------------
A *candidate* is one prompt (``m`` soft context vectors); evaluating it means computing its
normalised text features for all ``C`` classes. For each (model, C, P) the script times

* fast:  ``PromptedTextEncoder.encode(prompts, suffixes)``  (what the server runs)
* naive: ``PromptedTextEncoder.encode_reference(prompts, class_names)``  (what CoOp-style code
  runs: ``context_length`` tokens for every class of every candidate)

and reports candidates per second for each, their ratio, and the share of this machine's
fp32 matmul rate the fast path reaches. Both paths run on the same model, in the same process,
inside the same repeat loop (order rotated each repeat), so background load on a shared machine
hits both; every figure is a median over repeats and every comparison is a ratio of numbers
taken in the same repeat.

Subsampling (said in the output too)
------------------------------------
Neither path shares work *across* candidates (the fast path shares the prefix across the
classes of one candidate only), so the cost is linear in candidates and a rate measured on
``n <= P`` candidates estimates the rate at P. The naive path at P=1024, C=100 is 102,400
sequences x 77 tokens, far beyond a few minutes on a small CPU (and beyond its memory in one
call), so each path is timed on the first ``n`` of the P candidates, with ``n`` sized from a
calibration run to take about ``--budget-s`` seconds, within ``--fast-min``..``--fast-max`` (fast)
or up to ``--naive-max`` (naive), and at most P (naive: at most the smallest P). The table
shows ``n`` for both paths. The fast path is called with the whole n-batch in one ``encode``
call, chunked as the server chunks (``--chunk-tokens``, server default 65,536). Caveat: the
per-candidate cost is not quite batch-independent on CPU (bigger batches spill the caches), so
with n < P a P-row can be optimistic for the fast path at the real P.

Clocks
------
With one torch thread on the CPU (the default) the headline figures use this process's CPU
time (``time.process_time``): on a machine shared with other busy processes, wall-clock time
mostly measures how long the process waited for a core. Wall-clock rates and speed-ups are
kept in the JSON (``speedup_wall``, ``per_repeat``) and the table shows the wall speed-up too.
With more threads, CPU time would count spin-waiting, so ``--clock auto`` uses wall-clock.

FLOP model (matmul FLOPs only; layer norms, GELU, softmax, adds are not counted)
---------------------------------------------------------------------------------
W = width, H = MLP hidden width, E = embed dim, Lyr = layers, m = context vectors,
Lp = 1 + m (SOS + context), Ls_k = class k's suffix length (``"{name}." [EOT]``),
L = context_length. One token through one layer's linear maps costs
``f_tok = 2 * (3W*W + W*W + 2*W*H)`` (qkv, out projection, MLP up and down; = 24 W^2 when H = 4W).

fast, per candidate::

    Lyr * [ (Lp + sum_k Ls_k) * f_tok                 # prefix once + every class suffix
            + 4 * Lp*Lp * W                           # prefix self-attention, QK^T and AV (full square)
            + 4 * sum_k Ls_k * (Lp + Ls_k) * W ]      # suffix queries against cached prefix + suffix keys
    + 2 * C * W * E                          # text projection of the C EOT states

naive, per candidate::

    Lyr * C * [ L * f_tok + 4 * L*L * W ] + 2 * C * W * E

The fast path groups classes by suffix length, so it computes no padding token. The
matmul peak is ``--mm-size``^3 fp32 ``torch.mm`` (2 n^3 FLOPs each) at the same thread count,
measured inside every repeat; "% of matmul peak" = fast FLOPs x fast cand/s / matmul FLOP/s,
median over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

GROCERIES = [
    "Golden Delicious apple", "Granny Smith apple", "Pink Lady apple", "Red Delicious apple",
    "Royal Gala apple", "Cantaloupe melon", "Galia melon", "Honeydew melon", "Watermelon",
    "Anjou pear", "Conference pear", "Kaiser pear", "Orange", "Satsumas",
]

# 100 everyday objects, animals and scenes (the CIFAR-100 label set, written as plain names).
COMMON_OBJECTS = [
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
]
assert len(GROCERIES) == 14 and len(COMMON_OBJECTS) == 100 == len(set(COMMON_OBJECTS))


def class_names(c: int) -> list[str]:
    """The 14 groceries classes for C = 14; otherwise the first C common objects (groceries first if C < 14)."""
    if c == len(GROCERIES):
        return list(GROCERIES)
    if c < len(GROCERIES):
        return GROCERIES[:c]
    if c > len(COMMON_OBJECTS):
        raise SystemExit(f"--classes: at most {len(COMMON_OBJECTS)} classes are defined, got {c}")
    return COMMON_OBJECTS[:c]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Candidate evaluations per second of the server's fast prompted text path vs the naive "
        "full-context path (random weights, CPU). All figures are ratios/medians inside one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "sharpzo-standin-v2"], help="open_clip model names")
    p.add_argument("--classes", nargs="+", type=int, default=[14, 100], help="C values (class counts)")
    p.add_argument("--candidates", nargs="+", type=int, default=[40, 1024], help="P values (candidates per query)")
    p.add_argument("--m", type=int, default=4, help="context vectors per prompt")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; medians are reported")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; 1 by default because on a small machine shared with other busy "
                   "processes a thread pool as wide as the core count stalls at every barrier (see BENCHMARKS.md)")
    p.add_argument("--budget-s", type=float, default=3.0,
                   help="target seconds (of the --clock) for one timed call of either path; sets the subsample n")
    p.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                   help="time base of the headline figures: process CPU time or wall-clock; auto = cpu with 1 "
                   "thread on CPU (insensitive to waiting for a core on a shared machine), else wall")
    p.add_argument("--chunk-tokens", type=int, default=65_536, help="PromptedTextEncoder chunk_tokens (server default)")
    p.add_argument("--fast-min", type=int, default=4,
                   help="floor on fast-path candidates per timed call (a 1-candidate call is mostly per-call overhead)")
    p.add_argument("--fast-max", type=int, default=1024, help="cap on fast-path candidates per timed call")
    p.add_argument("--naive-max", type=int, default=64, help="cap on naive-path candidates per timed call")
    p.add_argument("--mm-size", type=int, default=1024, help="square fp32 matmul size for the FLOP-rate baseline")
    p.add_argument("--mm-reps", type=int, default=8, help="matmuls per baseline measurement (median taken)")
    p.add_argument("--device", default="cpu", help="torch device (the recorded figures are CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/server_throughput.json"), help="JSON result file")
    p.add_argument("--no-rich", action="store_true", help="plain-text table even if rich is installed")
    return p.parse_args(argv)


@dataclass
class Row:
    model: str
    classes: int
    candidates: int
    m: int
    context_length: int
    suffix_length: int
    fast_n: int
    naive_n: int
    clock: str  # which clock the headline figures use: "cpu" (process CPU time) or "wall"
    fast_cand_per_s: float  # headline clock
    naive_cand_per_s: float
    speedup: float  # median over repeats of (fast rate / naive rate) measured in the same repeat
    speedup_wall: float  # the same on wall-clock time
    speedup_cpu: float  # the same on process CPU time
    flop_ratio: float  # naive FLOPs / fast FLOPs: the speed-up if both ran at the same FLOP rate
    fast_gflop_per_cand: float
    naive_gflop_per_cand: float
    fast_gflops: float  # headline clock
    naive_gflops: float
    matmul_gflops: float  # headline clock, median over repeats
    fast_pct_of_matmul: float  # median over repeats of fast FLOP rate / matmul FLOP rate measured just before it
    naive_pct_of_matmul: float
    max_abs_diff_check: float  # fast vs naive features on a 1-candidate, 2-class sanity batch
    per_repeat: dict = field(default_factory=dict)


def text_dims(model) -> dict:
    blocks = model.transformer.resblocks
    return {
        "width": int(model.token_embedding.weight.shape[1]),
        "hidden": int(blocks[0].mlp.c_fc.out_features),
        "embed": int(model.text_projection.shape[1]),
        "layers": len(blocks),
        "context_length": int(model.positional_embedding.shape[0]),
    }


def flops_per_candidate(d: dict, m: int, c: int, ls: int | list[int]) -> tuple[float, float]:
    """(fast, naive) matmul FLOPs for one candidate's C class features; see the module docstring.

    ``ls`` is one suffix length for every class, or a list of per-class suffix lengths.
    """
    w, h, e, layers, ctx = d["width"], d["hidden"], d["embed"], d["layers"], d["context_length"]
    f_tok = 2 * (3 * w * w + w * w + 2 * w * h)
    lp = 1 + m
    lengths = ls if isinstance(ls, list) else [ls] * c
    suffix = sum(n * f_tok + 4 * n * (lp + n) * w for n in lengths)
    fast = layers * (lp * f_tok + 4 * lp * lp * w + suffix) + 2 * c * w * e
    naive = layers * c * (ctx * f_tok + 4 * ctx * ctx * w) + 2 * c * w * e
    return float(fast), float(naive)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns "no pretrained weights" per model

    import open_clip
    import torch

    from sharpzo.server.model import LoadedModel, check_servable
    from sharpzo.server.project_models import register_project_configs
    from sharpzo.server.text import PromptedTextEncoder

    torch.set_num_threads(args.threads)
    register_project_configs()
    device = torch.device(args.device)
    clock = args.clock if args.clock != "auto" else ("cpu" if args.threads == 1 and device.type == "cpu" else "wall")
    med = statistics.median

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> dict[str, float]:
        """Seconds of wall-clock and of this process's CPU time that ``fn()`` took."""
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}

    mm_a = torch.randn(args.mm_size, args.mm_size, device=device)
    mm_b = torch.randn(args.mm_size, args.mm_size, device=device)
    mm_gflop = 2.0 * args.mm_size**3 / 1e9

    def matmul_gflops() -> dict[str, float]:
        times = [timed(lambda: torch.mm(mm_a, mm_b)) for _ in range(args.mm_reps)]
        return {k: mm_gflop / max(med([t[k] for t in times]), 1e-9) for k in ("wall", "cpu")}

    log = print if args.no_rich else _rich_log()
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    rows: list[Row] = []
    notes: list[str] = []

    with torch.inference_mode():
        for _ in range(3):
            torch.mm(mm_a, mm_b)  # warm the BLAS
        for name in args.models:
            torch.manual_seed(args.seed)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
            model.eval().requires_grad_(False).to(device)
            tokenizer = open_clip.get_tokenizer(name)
            check_servable(model, tokenizer)
            loaded = LoadedModel(model, tokenizer, preprocess, preprocess, name, None, device, torch.float32, "fp32")
            enc = PromptedTextEncoder(loaded, args.chunk_tokens)
            dims = text_dims(model)
            gen = torch.Generator().manual_seed(args.seed + 1)
            _, p0 = enc.token_embeddings("a photo of a")
            base = p0[: args.m].cpu() if p0.shape[0] >= args.m else torch.zeros(args.m, enc.width)
            prompts_all = (base + 0.05 * torch.randn(max(args.candidates), args.m, enc.width, generator=gen)).to(device)

            for c in args.classes:
                names = class_names(c)
                suffixes = enc.suffixes(names, args.m)
                ls = suffixes.length
                # the fast path groups suffixes by length, so each runs only up to its own EOT
                f_fast, f_naive = flops_per_candidate(dims, args.m, c, [int(e) + 1 for e in suffixes.eot])

                # warm-up + correctness sanity on 1 candidate x 2 classes (cheap for both paths)
                small = enc.suffixes(names[:2], args.m)
                reference = enc.encode_reference(prompts_all[:1], names[:2])
                diff = float((enc.encode(prompts_all[:1], small) - reference).abs().max())
                # calibration: fast path on 2 candidates (after an untimed call at that shape); the naive
                # cost is estimated from the FLOP ratio (one naive candidate at C=100 is already slow)
                enc.encode(prompts_all[:2], suffixes)
                t_cal = timed(partial(enc.encode, prompts_all[:2], suffixes))[clock] / 2
                t_naive_est = t_cal * f_naive / f_fast
                fast_n = {p: min(p, max(args.fast_min, min(args.fast_max, int(args.budget_s / t_cal))))
                          for p in args.candidates}
                naive_n = max(1, min(min(args.candidates), args.naive_max, int(args.budget_s / t_naive_est)))
                log(f"{name} C={c} Ls={ls}: fast n={fast_n}, naive n={naive_n} "
                    f"(calibration {1 / t_cal:.2f} fast cand/{clock}-s; naive estimated {1 / t_naive_est:.3f})")

                # one repeat = [matmul, fast at P] for every P, and the naive path once; the order of
                # these jobs rotates from repeat to repeat and reverses on odd repeats
                jobs = [("fast", p) for p in args.candidates] + [("naive", 0)]
                rec: dict[str, list] = {"naive": [], "naive_mm": []}
                for p in args.candidates:
                    rec[f"fast{p}"], rec[f"mm{p}"] = [], []
                for r in range(args.repeats):
                    k = r % len(jobs)
                    order = jobs[k:] + jobs[:k]
                    for kind, p in order[::-1] if r % 2 else order:
                        mm = matmul_gflops()  # the FLOP-rate baseline, taken right before each timed call
                        if kind == "fast":
                            n = fast_n[p]
                            t = timed(partial(enc.encode, prompts_all[:n], suffixes))
                            rec[f"fast{p}"].append({key: n / t[key] for key in t})
                            rec[f"mm{p}"].append(mm)
                        else:
                            t = timed(partial(enc.encode_reference, prompts_all[:naive_n], names))
                            rec["naive"].append({key: naive_n / t[key] for key in t})
                            rec["naive_mm"].append(mm)
                    log(f"  repeat {r + 1}/{args.repeats}: "
                        + ", ".join(f"fast P={p} {rec[f'fast{p}'][-1][clock]:.3f}" for p in args.candidates)
                        + f", naive {rec['naive'][-1][clock]:.4f} cand/{clock}-s; matmul "
                        + f"{rec['naive_mm'][-1][clock]:.1f} GFLOP/{clock}-s  "
                        + f"[{time.perf_counter() - t_start:.0f}s wall]")

                naive = rec["naive"]
                for p in args.candidates:
                    fast, mms = rec[f"fast{p}"], rec[f"mm{p}"]
                    ratio = {key: med([f[key] / n[key] for f, n in zip(fast, naive)]) for key in ("wall", "cpu")}

                    rows.append(Row(
                        model=name, classes=c, candidates=p, m=args.m, context_length=dims["context_length"],
                        suffix_length=ls, fast_n=fast_n[p], naive_n=naive_n, clock=clock,
                        fast_cand_per_s=med([f[clock] for f in fast]), naive_cand_per_s=med([n[clock] for n in naive]),
                        speedup=ratio[clock], speedup_wall=ratio["wall"], speedup_cpu=ratio["cpu"],
                        flop_ratio=f_naive / f_fast,
                        fast_gflop_per_cand=f_fast / 1e9, naive_gflop_per_cand=f_naive / 1e9,
                        fast_gflops=med([f[clock] for f in fast]) * f_fast / 1e9,
                        naive_gflops=med([n[clock] for n in naive]) * f_naive / 1e9,
                        matmul_gflops=med([g[clock] for g in mms]),
                        fast_pct_of_matmul=100 * med([f[clock] * f_fast / 1e9 / g[clock] for f, g in zip(fast, mms)]),
                        naive_pct_of_matmul=100 * med([n[clock] * f_naive / 1e9 / g[clock]
                                                       for n, g in zip(naive, rec["naive_mm"])]),
                        max_abs_diff_check=diff,
                        per_repeat={"fast_cand_per_s": fast, "naive_cand_per_s": naive,
                                    "matmul_gflops_before_fast": mms, "matmul_gflops_before_naive": rec["naive_mm"]},
                    ))
            del enc, loaded, model

    elapsed = time.perf_counter() - t_start
    if clock == "cpu":
        notes.append("rates are per second of this process's CPU time (1 torch thread), so time spent waiting for a "
                     "core on the shared machine is not counted; the wall-clock speed-up is in the JSON (speedup_wall)")
    if any(r.naive_n < r.candidates for r in rows):
        notes.append("naive path timed on a subsample of n candidates (column 'naive n'); its rate is per "
                     "candidate, and neither path shares work across candidates, so the rates compare")
    if any(r.fast_n < r.candidates for r in rows):
        notes.append("fast path timed on the first n of the P candidates (column 'fast n') to fit the time budget: "
                     "one encode() call on the n-batch, chunked as the server chunks")
    target_rows = [r for r in rows if r.model == "ViT-B-32" and r.classes == 14]
    if target_rows:
        worst = min(r.speedup for r in target_rows)
        met = "MET" if worst >= 10 else "NOT MET"
        notes.append(f"target >= 10x over naive at C=14 on ViT-B-32: {met} (lowest speed-up {worst:.1f}x, "
                     f"FLOP ratio {target_rows[0].flop_ratio:.1f}x)")

    result = {
        "benchmark": "server_throughput",
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv] if argv is None else ["python", "bench/server_throughput.py", *argv]),
        "machine": {
            "cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "clock": clock,
        "elapsed_wall_s": elapsed,
        "notes": notes,
        "rows": [asdict(r) for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    _print_table(rows, args.no_rich)
    for n in notes:
        print(f"note: {n}")
    print(f"matmul baseline: {args.mm_size}^3 fp32 torch.mm, {torch.get_num_threads()} thread(s), taken before every "
          f"timed call; elapsed {elapsed:.0f}s wall; loadavg {load_start[0]:.2f} -> {os.getloadavg()[0]:.2f}; "
          f"wrote {args.out}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _rich_log():
    try:
        from rich.console import Console
    except ImportError:
        return print
    console = Console(stderr=True, highlight=False, width=160)
    return lambda msg: console.print(msg, style="dim", markup=False)


HEADERS = ["model", "C", "P", "Ls", "fast n", "naive n", "fast cand/s", "naive cand/s", "speed-up",
           "(wall)", "FLOP ratio", "fast GFLOP/s", "matmul GFLOP/s", "% of matmul"]


def _cells(r: Row) -> list[str]:
    return [r.model, str(r.classes), str(r.candidates), str(r.suffix_length), str(r.fast_n), str(r.naive_n),
            f"{r.fast_cand_per_s:.3g}", f"{r.naive_cand_per_s:.3g}", f"{r.speedup:.1f}x", f"{r.speedup_wall:.1f}x",
            f"{r.flop_ratio:.1f}x", f"{r.fast_gflops:.1f}", f"{r.matmul_gflops:.1f}", f"{r.fast_pct_of_matmul:.0f}%"]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _print_table(rows: list[Row], plain: bool) -> None:
    plain = plain or not sys.stdout.isatty()  # piped: the markdown table only
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        print(markdown_table(rows))
        return
    table = Table(title="Server text path: fast (prefix-cached, EOT-cut) vs naive (full context)")
    for h in HEADERS:
        table.add_column(h, justify="left" if h == "model" else "right")
    for r in rows:
        table.add_row(*_cells(r))
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
