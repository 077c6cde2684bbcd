"""torchrun data parallelism on CPU: 2 gloo processes take the steps one process takes."""
import subprocess
import sys

from safetensors.torch import load_file

from conftest import ROOT
from soups.io import read_json
from test_resume import ENV, finetune_command

# LayerNorm model (torch has no SyncBatchNorm on CPU), no random augmentation: the same steps exactly
SETTINGS = ["model=tiny_vit", "epochs=2", "randaug=null", "mixup=0.0", "logger=none", "threads=1"]
TOLERANCE = 1e-5  # gradients are summed across processes in another order than within one


def test_two_gloo_processes_end_with_the_weights_of_one_process(tmp_path):
    single = tmp_path / "single"
    subprocess.run(finetune_command(tmp_path, *SETTINGS, f"hydra.run.dir={single}"), env=ENV, check=True,
                   capture_output=True)
    command = finetune_command(tmp_path, *SETTINGS)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *command[1:]]
    done = subprocess.run(torchrun, env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "logs" / "finetune" / "runs").iterdir())
    assert len(runs) == 1  # one run dir: rank 1 worked in rank 0's and left no folder of its own
    a, b = load_file(str(single / "model.safetensors")), load_file(str(runs[0] / "model.safetensors"))
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < TOLERANCE, f"largest weight difference {worst:.2e}"
    one, two = read_json(single / "run.json"), read_json(runs[0] / "run.json")
    assert [r["step"] for r in one["history"]] == [r["step"] for r in two["history"]]
    assert all(abs(x["train_loss"] - y["train_loss"]) < 1e-4 for x, y in zip(one["history"], two["history"]))
    assert abs(one["metrics"]["val"] - two["metrics"]["val"]) <= 1.0
