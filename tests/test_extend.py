"""Each extension point is one file + one YAML, added here from the test itself and run through soup.py
as a user would: a recipe (src/soups/recipes/<name>.py + conf/method/<name>.yaml)."""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RECIPE = '''"""Best-k soup: the average of the k best ingredients by held-out accuracy."""
from dataclasses import dataclass

from soups.averaging import average
from soups.recipes import Recipe, RecipeResult


@dataclass
class BestKSoup(Recipe):
    k: int = 2

    def __call__(self, ingredients, ctx) -> RecipeResult:
        best = sorted(ingredients, key=lambda i: i.held_out, reverse=True)[: self.k]
        return RecipeResult(average(ctx.load(i) for i in best), best, {"k": self.k})
'''


def test_a_new_recipe_is_one_file_and_one_yaml(tiny_sweep, tmp_path):
    _, sweep = tiny_sweep
    name = f"best_k_{uuid.uuid4().hex[:8]}"
    code, config = ROOT / "src" / "soups" / "recipes" / f"{name}.py", ROOT / "conf" / "method" / f"{name}.yaml"
    try:
        code.write_text(RECIPE)
        config.write_text(f"# @package method.{name}\n_target_: soups.recipes.{name}.BestKSoup\nk: 2\n")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
        proc = subprocess.run([sys.executable, "src/soup.py", f"method=[uniform,{name}]", f"pool.dir={sweep}",
                               "logger=none", f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        code.unlink(missing_ok=True)
        config.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"| **{name} soup** |" in proc.stdout or f"| {name} soup |" in proc.stdout, proc.stdout[-2000:]
    soup_dir = next((tmp_path / "logs" / "soup" / "runs").iterdir()) / name
    record = json.loads((soup_dir / "soup.json").read_text())
    assert record["k"] == 2 and len(record["ingredients"]) == 2 and record["kind"] == "soup"
    assert (soup_dir / "model.safetensors").is_file() and (soup_dir / "run.json").is_file()
