"""Fuzz model loading with thousands of damaged .tflite files (engine: tests/model_fuzz.py).

    .venv/bin/python scripts/fuzz_models.py --backend tflite_runtime --count 2000 --seed 1

Each mutant goes through `python -m edge classify`'s code in a worker process of the backend's
own venv; prints the counts of ok / clean errors / crashes / hangs / tracebacks / bad outputs
and every failing mutant (seed, index, seed model, mutation) so it can be rebuilt. Exit 1 when
any mutant failed. Run from the main venv (it builds the seed models with trainer.export.metadata).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import model_fuzz  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="ai_edge_litert", choices=["ai_edge_litert", "tflite_runtime"])
    parser.add_argument("--count", type=int, default=2000, help="mutants to run")
    parser.add_argument("--seed", type=int, default=0, help="mutant i of seed s is always the same file")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--timeout", type=float, default=30, help="seconds before a mutant counts as a hang")
    parser.add_argument("--errors", action="store_true", help="also list the clean error messages by kind")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="edge-fuzz-seeds-") as tmp:
        seeds = model_fuzz.prepare_seeds(Path(tmp))
        start = time.perf_counter()
        results = model_fuzz.run_fuzz(args.backend, args.count, args.seed, seeds, args.jobs, args.timeout)
        elapsed = time.perf_counter() - start
    counts = model_fuzz.summary(results)
    print(f"{args.backend}: {args.count} mutants (seed {args.seed}) in {elapsed:.1f} s: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for r in results:
        if r.outcome in model_fuzz.FAILURES:
            print(f"  {r.outcome}: seed {args.seed} mutant {r.i} ({r.seed_model}: {r.mutation}): {r.detail}")
    if args.errors:
        kinds = collections.Counter(re.sub(r"b'.*?'|b\".*?\"|\d+", "N", r.detail.split(": ", 1)[-1])[:100]
                                    for r in results if r.outcome == "error")
        for kind, n in kinds.most_common():
            print(f"  {n:5d}  {kind}")
    return 1 if any(counts[k] for k in model_fuzz.FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
