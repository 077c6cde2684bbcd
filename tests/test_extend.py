"""Each extension point is one file + one YAML, added here from the test itself and run as a user would:
a recipe (src/soups/recipes/<name>.py + conf/method/<name>.yaml) through soup.py; a dataset
(src/soups/data/<name>.py + conf/data/<name>.yaml) and a model (src/soups/models/configs/<name>.json +
conf/model/<name>.yaml) through a finetune.py sweep and soup.py; a head (src/soups/heads/<name>.py) and a
logger (src/soups/tracking/<name>.py), each + its YAML, through finetune.py."""
import json
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import commands
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def added(files: dict):
    """Write {path: text} into the source tree for the duration of the block (a user's new files)."""
    try:
        for path, text in files.items():
            path.write_text(text)
        yield
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def command(script: str, args: list, tmp_path: Path, logger: str = "none") -> subprocess.CompletedProcess:
    return commands.succeeded(commands.project(f"src/{script}.py", *args, f"logger={logger}", tmp=tmp_path,
                                               timeout=900))


def sweep_then_soup(overrides: list, tmp_path: Path, tiny=TINY) -> dict:
    """A one-job sweep (-m), then uniform + greedy soups of it: the uniform soup's record."""
    command("finetune", ["-m", "lr=1e-3", *tiny, *overrides], tmp_path)
    proc = command("soup", ["method=[uniform,greedy]"], tmp_path)
    soups = next((tmp_path / "logs" / "soup" / "runs").iterdir())
    return {"stdout": proc.stdout, "uniform": json.loads((soups / "uniform" / "soup.json").read_text())}

RECIPE = '''"""Best-k soup: the average of the k best ingredients by held-out accuracy, with its own table (the
ranking it read) and figure (held-out accuracy per ingredient)."""
from dataclasses import dataclass

from soups import plots
from soups.averaging import average
from soups.recipes import Recipe, RecipeResult


def draw_ranking(ranking, path, title):
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    ax.bar(range(len(ranking)), [r["held_out"] for r in ranking])
    ax.set_title(title)
    plots.save(fig, path)


@dataclass
class BestKSoup(Recipe):
    k: int = 2

    def __call__(self, ingredients, scorer) -> RecipeResult:
        ranked = sorted(ingredients, key=lambda i: i.held_out, reverse=True)
        ranking = [{"run": i.name, "held_out": i.held_out, "chosen": n < self.k} for n, i in enumerate(ranked)]
        return RecipeResult(average(scorer.load(i) for i in ranked[: self.k]), ranked[: self.k], {"k": self.k},
                            tables={"ranking": ranking},
                            figures={"ranking": lambda path, title: draw_ranking(ranking, path, title)})
'''


def test_a_new_recipe_with_its_own_table_and_figure_is_one_file_and_one_yaml(tiny_sweep, soup_cfg, tmp_path,
                                                                              monkeypatch):
    """The report, soup.json and W&B (offline) show a new recipe's own table and figure, and nothing else is
    edited: run through soup.py as a user would, then in process to see what the tracker is handed."""
    import contextlib
    import importlib

    from test_tracking import RecordingTracker

    _, sweep = tiny_sweep
    name = f"best_k_{uuid.uuid4().hex[:8]}"
    with added({ROOT / "src" / "soups" / "recipes" / f"{name}.py": RECIPE,
                ROOT / "conf" / "method" / f"{name}.yaml": f"# @package method.{name}\n"
                                                            f"_target_: soups.recipes.{name}.BestKSoup\nk: 2\n"}):
        proc = command("soup", [f"method=[uniform,{name}]", f"pool.dir={sweep}"], tmp_path, logger="wandb")
        importlib.invalidate_caches()
        from soups.jobs import soup as soup_job

        recorder = RecordingTracker()
        monkeypatch.setattr(soup_job, "tracking", lambda *a, **k: contextlib.nullcontext(recorder))
        soup_job.run_soup(soup_cfg(f"pool.dir={sweep}", f"method={name}"), tmp_path / "in_process")
    assert f"| {name} soup |" in proc.stdout or f"| **{name} soup** |" in proc.stdout, proc.stdout[-2000:]
    out = next((tmp_path / "logs" / "soup" / "runs").iterdir())
    record = json.loads((out / name / "soup.json").read_text())
    assert record["k"] == 2 and len(record["ingredients"]) == 2 and record["kind"] == "soup"
    assert [r["chosen"] for r in record["ranking"]] == [True, True, False]  # its table, in soup.json
    assert (out / name / "model.safetensors").is_file() and (out / name / "run.json").is_file()
    assert (out / name / "ranking.png").stat().st_size > 1000  # its figure
    report = (out / "report.md").read_text()
    assert f"## {name} soup" in report and "| run | held_out | chosen |" in report
    assert f"]({name}/ranking.png)" in report
    # W&B (offline here): the table and the figure are media of the soup job's run
    media = next((out / "wandb").glob("offline-run-*/files/media"))
    table = json.loads(next(media.glob(f"table/{name}/ranking_*.table.json")).read_text())
    assert table["columns"] == ["run", "held_out", "chosen"] and len(table["data"]) == 3
    assert list(media.glob(f"images/{name}/ranking_*.png"))
    columns, rows = recorder.tables[f"{name}/ranking"]
    assert columns == ["run", "held_out", "chosen"] and len(rows) == 3
    assert recorder.images[f"{name}/ranking"].name == "ranking.png"


DATASET = '''"""scikit-learn's 8x8 digits as a dataset family of its own; the shift: the test digits mirrored."""
from dataclasses import dataclass

from soups.data.base import TaskData, train_transform
from soups.data.digits import sklearn_digits
from soups.data.images import EvalSet, ImageArray, TransformedImages
from soups.names import HELD_OUT, TEST


@dataclass
class SmallDigits(TaskData):
    train_images: int = 400  # a setting of its own (conf/data/<name>.yaml)

    def load(self, model_cfg, cache_dir=None):
        digits, self.model_cfg, n = sklearn_digits(), model_cfg, self.train_images
        part = lambda name, lo, hi: ImageArray(name, digits.images[lo:hi], digits.labels[lo:hi], digits.ids[lo:hi])
        self.train, self.held_out, self.test = part("train", 0, n), part(HELD_OUT, n, n + 200), part(TEST, n + 200, n + 400)
        self.mirrored = ImageArray("mirrored", self.test.images.flip(-1), self.test.labels, self.test.ids)
        return self

    def _eval(self, images):
        return EvalSet(images, self.model_cfg.image_size, self.model_cfg.mean, self.model_cfg.std)

    def eval_sets(self):
        shifts = {"mirrored": self._eval(self.mirrored)}
        return {HELD_OUT: self._eval(self.held_out), TEST: self._eval(self.test), **{n: shifts[n] for n in self.shifts["names"]}}

    def train_set(self, randaug, crop_scale):
        return TransformedImages(self.train, train_transform(self.model_cfg, randaug, crop_scale, ratio=(1.0, 1.0)))

    def probe_sets(self, per_class=None):
        return self._eval(self.train), self._eval(self.held_out)

    def bn_set(self):
        return self._eval(self.train)
'''


def test_a_new_dataset_with_its_own_shifts_is_one_file_and_one_yaml(tmp_path):
    """`data=<name>` alone brings the dataset's own shifts (its YAML's `shifts:`), never another dataset's."""
    name = f"small_digits_{uuid.uuid4().hex[:8]}"
    with added({ROOT / "src" / "soups" / "data" / f"{name}.py": DATASET,
                ROOT / "conf" / "data" / f"{name}.yaml": f"_target_: soups.data.{name}.SmallDigits\nname: {name}\n"
                                                          f"num_classes: 10\ntrain_images: 400\nshifts:\n  names: [mirrored]\n"}):
        result = sweep_then_soup([f"data={name}"], tmp_path, [a for a in TINY if not a.startswith("data.")])
    assert set(result["uniform"]["metrics"]) == {"val", "test", "mirrored", "avg_shifts"}
    assert "| uniform soup |" in result["stdout"] or "| **uniform soup** |" in result["stdout"]


def test_a_new_model_is_one_json_and_one_yaml(tmp_path):
    name = f"tiny_convnext_{uuid.uuid4().hex[:8]}"
    config = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "timm_model_name": "test_convnext",
                                              "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "none"},
              "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 16, "heads": 1, "layers": 1}}
    yaml = (f"name: {name}\nopen_clip_name: {name}-clip\npretrained: null\nimage_tower_weights: null\n"
            f"image_size: 32\nmean: [0.5, 0.5, 0.5]\nstd: [0.5, 0.5, 0.5]\nnormalize_features: false\n"
            f"channels_last: false\n")
    with added({ROOT / "src" / "soups" / "models" / "configs" / f"{name}-clip.json": json.dumps(config),
                ROOT / "conf" / "model" / f"{name}.yaml": yaml}):
        result = sweep_then_soup([f"model={name}"], tmp_path)
        run = next((tmp_path / "logs" / "finetune" / "multiruns").iterdir()) / "0" / "run.json"
        assert json.loads(run.read_text())["config"]["model"]["open_clip_name"] == f"{name}-clip"
    assert len(result["uniform"]["ingredients"]) == 1


HEAD = '''"""The shared init as the pretrained tower with a zero head (every class scores 0 at the start)."""
from dataclasses import dataclass

from soups.heads import Head
from soups.models.classifier import build_classifier


@dataclass
class ZeroHead(Head):
    bias: float = 0.0

    def __call__(self, cfg, data, device):
        model = build_classifier(cfg.model, cfg.data.num_classes, cache_dir=cfg.paths.cache_dir).to(device)
        model.head.weight.data.zero_()
        model.head.bias.data.fill_(self.bias)
        return model, {"zeroed": True}
'''

LOGGER = '''"""Metrics as JSON lines in the run folder."""
import contextlib
import json
from dataclasses import dataclass

from soups.tracking import Logger, Tracker


class Lines(Tracker):
    def __init__(self, out):
        self.out = out

    def log(self, metrics, step=None):
        self.out.write(json.dumps({"step": step, **metrics}) + "\\n")

    def summary(self, metrics):
        self.log({"summary": metrics})


@dataclass
class JsonLines(Logger):
    file: str = "metrics.jsonl"

    @contextlib.contextmanager
    def open(self, run_dir, name, job_type, config, group):
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / self.file, "a") as out:
            yield Lines(out)
'''


def test_a_new_head_and_a_new_logger_are_one_file_and_one_yaml_each(tmp_path):
    head, logger = f"zero_head_{uuid.uuid4().hex[:8]}", f"json_lines_{uuid.uuid4().hex[:8]}"
    tiny = [a for a in TINY if not a.startswith(("head.", "logger="))]
    with added({ROOT / "src" / "soups" / "heads" / f"{head}.py": HEAD,
                ROOT / "conf" / "head" / f"{head}.yaml": f"_target_: soups.heads.{head}.ZeroHead\nbias: 0.5\n",
                ROOT / "src" / "soups" / "tracking" / f"{logger}.py": LOGGER,
                ROOT / "conf" / "logger" / f"{logger}.yaml": f"_target_: soups.tracking.{logger}.JsonLines\n"}):
        commands.succeeded(commands.project("src/finetune.py", *tiny, f"head={head}", f"logger={logger}",
                                            f"hydra.run.dir={tmp_path}/run", tmp=tmp_path, timeout=900))
    init_dir = json.loads((tmp_path / "run" / "run.json").read_text())["init"]["dir"]
    init = json.loads((Path(init_dir) / "init.json").read_text())
    assert init["head"]["zeroed"] is True and init["head"]["bias"] == 0.5
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "train_loss" in lines[0] and "final/test" in lines[-1]["summary"]
