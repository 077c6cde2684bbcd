"""The results notebook reads a soup run's files and draws every section: in-process (fast) and through
a real Jupyter kernel (nbclient, slow)."""
import json
from pathlib import Path

import pytest

from conftest import ROOT, compose_cfg, own_cache
from soups.jobs.soup import run_soup

NOTEBOOK = ROOT / "notebooks" / "soup_results.ipynb"
METHODS = ["method=[uniform,greedy,greedy_random,learned,learned_bylayer,wise_ft,ensemble]",
           "method.greedy_random.orders=2", "method.learned.epochs=1", "method.learned_bylayer.epochs=1",
           "method.wise_ft.alphas=[0.0,0.5,1.0]"]


@pytest.fixture(scope="module")
def soup_run(tiny_sweep, tmp_path_factory) -> Path:
    tmp, sweep = tiny_sweep
    base = own_cache(tmp, tmp_path_factory.mktemp("notebook"))
    out = base / "soup"
    run_soup(compose_cfg("soup", base, ["logger=none", "eval_batch_size=128", f"pool.dir={sweep}", *METHODS]), out)
    return out


def test_notebook_cells_run_on_a_soup_run(soup_run, tiny_sweep, tmp_path, monkeypatch, capsys):
    import matplotlib

    from soups.jobs.analyze import run_analysis

    matplotlib.use("Agg")
    tmp, sweep = tiny_sweep
    base = own_cache(tmp, tmp_path)
    run_analysis(compose_cfg("analyze", base, ["logger=none", f"pool.dir={sweep}"]), tmp_path / "analyses" / "run")
    run_analysis(compose_cfg("analyze", base, ["logger=none", f"pool.dir={sweep}", "analysis=soup_ensemble",
                                               "analysis.betas=[1]"]), tmp_path / "analyses" / "run2")
    monkeypatch.setenv("SOUPS_RESULTS", str(soup_run))
    monkeypatch.setenv("SOUPS_ANALYSES", str(tmp_path / "analyses"))
    scope = {}
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), scope)
    printed = capsys.readouterr().out
    assert "| **greedy soup** |" in printed and "accepted" in printed
    assert "mean ± std" in printed and "<- saved" in printed and "was not run" not in printed
    assert "uniform soup             test ECE" in printed and "] p=" in printed  # calibration, intervals
    assert "pairs: 3 pairs, Spearman" in printed and "landscape: not run yet" in printed
    assert "soup_ensemble: 3 pairs x 1 temperatures on test, observed vs approximated" in printed


@pytest.mark.slow
def test_notebook_executes_headlessly_in_a_kernel(soup_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SOUPS_RESULTS", str(soup_run))
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 5  # Figure 1, greedy trace, two learned coefficient plots, WiSE-FT curve
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "| **learned_bylayer soup** |" in text and "was not run" not in text
