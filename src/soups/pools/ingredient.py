"""An ingredient: one set of fine-tuned weights in a pool, with its record (a run's run.json)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from soups.names import HELD_OUT, WEIGHTS_NAME


@dataclass
class Ingredient:
    """One set of fine-tuned weights. `info` holds at least `metrics` once evaluated (a run's run.json)."""
    name: str
    weights: Path
    info: dict = field(repr=False)
    run_dir: Path | None = None
    header: dict = field(default_factory=dict, repr=False)  # {key: (shape, dtype)} of the weights
    short_name: str | None = None  # what the report calls it where that is unique in its pool (`label`)

    @classmethod
    def from_run_dir(cls, run_dir: Path, info: dict) -> "Ingredient":
        """Named `<sweep folder>/<job>` (unique across sweeps); shown as `fine-tune <job>` in a sweep's report."""
        short = f"fine-tune {run_dir.name}" if run_dir.name.isdigit() else run_dir.name
        return cls(f"{run_dir.parent.name}/{run_dir.name}", run_dir / WEIGHTS_NAME, info, run_dir, short_name=short)

    @property
    def label(self) -> str:
        """The report's name for it: the short name, else the unique name."""
        return self.short_name or self.name

    @property
    def source(self) -> Path:
        """Where the user's copy lives: the run dir, or the original file a checkpoint was converted from."""
        return self.run_dir or Path(self.info.get("source", self.weights))

    @property
    def held_out(self) -> float:
        return float(self.info["metrics"][HELD_OUT])


def best_individual(ingredients: list[Ingredient]) -> Ingredient:
    """The best individual: highest held-out accuracy, the first in pool order on a tie (every table's
    `best individual` row, WiSE-FT's default base and the analyses use this one rule)."""
    return max(ingredients, key=lambda i: i.held_out)

