"""The demo over several random-search draws: what holds for each recipe, not what one run showed.

    .venv/bin/python scripts/demo_study.py                                  # both demos, search seeds 0-4
    .venv/bin/python scripts/demo_study.py --demos vit --seeds 0 1 2 3 4 5 6 7
    .venv/bin/python scripts/demo_study.py --summary-only                   # tables from finished draws
    .venv/bin/python scripts/demo_study.py --demos vit --out logs/demo_study_recipes \
        --train-args "ema_decay=0.999 ema_warmup=true keep_checkpoints=3 checkpoint_every_steps=15" \
        --soup-args "method=[uniform,greedy,mehl,fisher,regmean,ema,last_k] method.fisher.estimator=sampled"

Each draw is exactly `make demo` (or `make text-demo`: --demos text) with another `search_seed` (8 other hyperparameter draws, the same
shared init): `src/finetune.py experiment=demo_<name> sweep=demo search_seed=S` then `src/soup.py` on
that sweep, W&B off. Per recipe it reports the mean ± std (over draws) of the difference to the best
individual (by held-out) on held-out, test and avg shifts, and how often greedy kept more than one
ingredient. Finished draws are kept (`--out`, default logs/demo_study) and reused: an interrupted study
resumes. Every run.json names the CPU and its instruction set, so a table traces to its machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMOS = {"vit": "demo_vit", "efficientnet": "demo_efficientnet", "text": "text_demo", "text_lora": "text_demo_lora"}
SOUP_OVERRIDES = {"text": ["method=[uniform,greedy,ensemble]"],  # as `make text-demo`
                  "text_lora": ["method=[uniform,greedy,lora_factor_mean]"]}  # as `make text-demo-lora`
COLUMNS = (("val", "held-out"), ("test", "test"), ("avg_shifts", "avg shifts"))
SHIFTS_TEXT = (("amazon", "amazon"), ("tweets", "tweets"), ("nyt", "nyt"))
PER_SHIFT = {"text": SHIFTS_TEXT, "text_lora": SHIFTS_TEXT}  # shown one by one too
RECIPES = ("uniform soup", "greedy soup", "ensemble", "lora_factor_mean soup", "learned soup", "mehl soup",
           "fisher soup", "regmean soup", "ties soup", "dare soup", "model_stock soup", "WiSE-FT of its base",
           "EMA of the best run", "last-k average of the best run")
BY_METHOD = {"ema": "EMA of the best run", "last_k": "last-k average of the best run",  # rows named by their run
             "wise_ft": "WiSE-FT of its base"}


def columns(demo: str) -> tuple:
    return COLUMNS[:2] + PER_SHIFT.get(demo, ()) + COLUMNS[2:]


def run_draw(demo: str, seed: int, out: Path, extra: list[str], train: list[str] = (), soup: list[str] = ()) -> dict:
    """One `make demo` with search_seed=seed; returns its results rows (results.json) and wall times."""
    folder = out / demo / f"seed{seed}"
    done = folder / "draw.json"
    if done.is_file():
        return json.loads(done.read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    start = time.time()  # the soup job reads model and data from the ingredients' run.json
    subprocess.run([sys.executable, "src/finetune.py", f"experiment={DEMOS[demo]}", "sweep=demo", f"search_seed={seed}",
                    f"hydra.sweep.dir={folder / 'sweep'}", "logger=none", *extra, *train], cwd=ROOT, env=env, check=True)
    sweep_s = time.time() - start
    subprocess.run([sys.executable, "src/soup.py", f"pool.dir={folder / 'sweep'}", f"hydra.run.dir={folder / 'soup'}",
                    "logger=none", *(soup or SOUP_OVERRIDES.get(demo, [])), *extra], cwd=ROOT, env=env, check=True)
    rows = json.loads((folder / "soup" / "results.json").read_text())
    machine = json.loads((folder / "sweep" / "0" / "run.json").read_text()).get("environment", {})
    draw = {"demo": demo, "seed": seed, "rows": rows, "machine": machine,
            "seconds": {"sweep": round(sweep_s, 1), "soups": round(time.time() - start - sweep_s, 1)}}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(draw, indent=1))
    tmp.replace(done)
    return draw


def gains(draw: dict, cols=COLUMNS) -> dict[str, dict]:
    """Per recipe: its metrics minus the best individual's, and its ingredient count."""
    rows = {BY_METHOD.get(r.get("method"), r["row"]): r for r in draw["rows"]}
    best = next(r for r in draw["rows"] if r["kind"] == "best_individual")
    individuals = [r for r in draw["rows"] if r["kind"] == "individual"]
    out = {"mean individual": {"diff": {c: statistics.fmean(r["metrics"][c] for r in individuals) - best["metrics"][c]
                                        for c, _ in cols}, "ingredients": 1}}
    for name in RECIPES:
        if name in rows:
            out[name] = {"diff": {c: rows[name]["metrics"][c] - best["metrics"][c] for c, _ in cols},
                         "ingredients": int(rows[name]["ingredients"])}
    return out


def summarize(draws: list[dict], cols=COLUMNS) -> dict:
    """Mean, std, min, max of each recipe's difference to the best individual, over draws."""
    per = [gains(d, cols) for d in draws]
    summary = {}
    for name in ("mean individual", *RECIPES):
        got = [g[name] for g in per if name in g]
        if not got:
            continue
        entry = {"draws": len(got)}
        for col, _ in cols:
            xs = [g["diff"][col] for g in got]
            entry[col] = {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                          "min": min(xs), "max": max(xs), "positive": sum(x > 0 for x in xs),
                          "at_least_zero": sum(x >= 0 for x in xs)}
        entry["ingredients"] = [g["ingredients"] for g in got]
        summary[name] = entry
    return summary


def markdown(demo: str, draws: list[dict], summary: dict, cols=COLUMNS) -> str:
    seeds = ", ".join(str(d["seed"]) for d in draws)
    env = draws[0].get("machine", {})
    minutes = [(d["seconds"]["sweep"] + d["seconds"]["soups"]) / 60 for d in draws]
    lines = [f"### {demo}: {len(draws)} draws (search seeds {seeds})", "",
             f"Difference to the best individual (by held-out), percentage points, mean ± std [min, max] over "
             f"draws; in parentheses: draws where it is > 0. Machine: {env.get('cpu', env.get('device', '?'))} "
             f"({env.get('cpu_capability', '?')}); {min(minutes):.1f}-{max(minutes):.1f} min per draw.", "",
             "| | " + " | ".join(h for _, h in cols) + " | #ingredients |", "|---|" + "---:|" * (len(cols) + 1)]
    for name, entry in summary.items():
        cells = [f"{e['mean']:+.2f} ± {e['std']:.2f} [{e['min']:+.2f}, {e['max']:+.2f}] ({e['positive']}/{entry['draws']})"
                 for e in (entry[c] for c, _ in cols)]
        ingredients = entry["ingredients"]
        low, high = (1, 1) if name == "mean individual" else (min(ingredients), max(ingredients))
        count = str(low) if low == high else f"{low}-{high}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {count} |")
    greedy = summary.get("greedy soup")
    if greedy:
        kept = sum(k > 1 for k in greedy["ingredients"])
        lines += ["", f"Greedy soup kept more than one ingredient in {kept} of {greedy['draws']} draws "
                  f"(ingredients per draw: {greedy['ingredients']})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demos", nargs="+", choices=sorted(DEMOS), default=["vit", "efficientnet"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "demo_study")
    parser.add_argument("--summary-only", action="store_true", help="only summarize draws already finished")
    parser.add_argument("--train-args", default="", help="extra overrides for src/finetune.py only (space-separated)")
    parser.add_argument("--soup-args", default="", help="overrides for src/soup.py only, replacing the demo's method")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both commands")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    report = []
    for demo in args.demos:
        draws = []
        for seed in args.seeds:
            done = args.out / demo / f"seed{seed}" / "draw.json"
            if args.summary_only:
                if done.is_file():
                    draws.append(json.loads(done.read_text()))
                continue
            draws.append(run_draw(demo, seed, args.out, args.overrides, args.train_args.split(), args.soup_args.split()))
        if not draws:
            print(f"{demo}: no finished draws under {args.out / demo}", file=sys.stderr)
            continue
        cols = columns(demo)
        summary = summarize(draws, cols)
        (args.out / demo / "summary.json").write_text(json.dumps(summary, indent=1))
        report.append(markdown(demo, draws, summary, cols))
    if not report:
        print(f"error: no finished draws of {', '.join(args.demos)} under {args.out}", file=sys.stderr)
        return 1
    text = "\n".join(report)
    (args.out / "study.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
