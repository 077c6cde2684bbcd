"""Within-run averages of the best fine-tune (by held-out accuracy), the baselines DiWA and Model Ratatouille
report soups against: its exponential moving average (`source: ema`; "moving average" in their tables) and
the uniform average of its last `k` checkpoints (`source: checkpoints`, taken along the run's own schedule, not
SWA's constant learning rate; as timm's avg_checkpoints.py). The runs keep them when fine-tuned with `ema_decay` / `keep_checkpoints`
(soups.training.within_run); every file is checked against the sha256 its run recorded."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from soups.averaging import average
from soups.errors import BadInput, NotApplicable
from soups.io.files import load_weights, sha256_file
from soups.recipes import Recipe, RecipeResult
from soups.recipes.greedy import by_held_out

SOURCES = ("ema", "checkpoints")
EMA_HOW = "ema_decay=0.999 ema_warmup=true"  # what the refusal advises


@dataclass
class WithinRunAverage(Recipe):
    source: str = "checkpoints"  # ema | checkpoints
    k: int = 0                   # checkpoints: the last k the run kept (0: all it kept)

    def __post_init__(self):
        super().__post_init__()
        if self.source not in SOURCES:
            raise BadInput(f"source={self.source!r}; expected one of {list(SOURCES)}")
        if self.k < 0:
            raise BadInput(f"k={self.k}; expected an integer >= 0 (0: every checkpoint the run kept)")

    def files(self, ingredient) -> list[tuple[Path, str]]:
        """[(file, recorded sha256)] of this ingredient's run, oldest first; [] if it kept none."""
        info, run_dir = ingredient.info, ingredient.run_dir
        if run_dir is None:
            return []
        if self.source == "ema":
            return [(run_dir / info["ema"]["weights"], info["ema"]["sha256"])] if info.get("ema") else []
        kept = info.get("checkpoints") or []
        if self.k and len(kept) < self.k:
            return []
        return [(run_dir / c["weights"], c["sha256"]) for c in kept[-self.k if self.k else 0:]]

    def check(self, ingredients) -> None:
        if self.source == "ema" and any(i.info.get("weights_of") == "ema" for i in ingredients):
            raise NotApplicable("the ingredients are already the runs' EMAs (pool.ema=true): the best one is the best "
                                "individual's row")
        lacking = [i for i in ingredients if not self.files(i)]
        if not lacking:
            return
        if self.source == "ema":
            raise NotApplicable(f"{len(lacking)} of {len(ingredients)} ingredients have no EMA of their weights (e.g. "
                                f"{lacking[0].label}); fine-tune with {EMA_HOW} (run dirs of this project only)")
        kept = len(lacking[0].info.get("checkpoints") or [])
        raise NotApplicable(f"{len(lacking)} of {len(ingredients)} ingredients have "
                            f"{f'fewer than k={self.k}' if self.k else 'no'} kept checkpoints (e.g. {lacking[0].label}: "
                            f"{kept}); fine-tune with keep_checkpoints={max(self.k, 3)} (run dirs of this project only)")

    def __call__(self, ingredients, scorer) -> RecipeResult:
        best = by_held_out(ingredients)[0]
        run = best.label.removesuffix(" (EMA)")  # pool.ema=true: the run's checkpoints, not its EMA
        files = self.files(best)
        for path, digest in files:
            if not path.is_file() or sha256_file(path) != digest:
                raise BadInput(f"{path} is missing or does not match the sha256 its run recorded")
        weights = average(load_weights(path) for path, _ in files)
        row = f"EMA ({run})" if self.source == "ema" else f"last-{len(files)} average ({run})"
        details = {"run": run, "source": self.source, "files": [str(p) for p, _ in files],
                   "run_held_out": best.held_out}
        return RecipeResult(weights, [best], details, new_point=True, row=row)
