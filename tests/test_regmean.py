"""RegMean: the merge is the least-squares solution on constructed inputs, Grams come from forward hooks on
every linear map that runs (nn.MultiheadAttention's in-projection included, its out-projection not), padding
never enters a Gram, a singular Gram solves with the ridge, and `python src/soup.py method=regmean` runs."""
import pytest
import torch
from torch import nn

from conftest import compose_cfg, own_cache
from soups.errors import BadInput
from soups.models.text import TokenBatch
from soups.recipes.regmean import gram_matrices, regmean_merge


def test_alpha_1_is_the_least_squares_merge_of_the_ingredients_outputs():
    torch.manual_seed(0)
    xs = [torch.randn(20, 3, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64) * 2]
    ws = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)]
    states = [{"w": w, "b": torch.full((4,), float(i), dtype=torch.float64)} for i, w in enumerate(ws)]
    grams = [{"w": x.T @ x / len(x)} for x in xs]
    got = regmean_merge(states, grams, alpha=1.0, ridge=0.0)
    # argmin_W sum_i |X_i W^T - X_i W_i^T|^2 / n_i, by least squares on the stacked, row-scaled system
    a = torch.cat([x / len(x) ** 0.5 for x in xs])
    b = torch.cat([x @ w.T / len(x) ** 0.5 for x, w in zip(xs, ws)])
    torch.testing.assert_close(got["w"], torch.linalg.lstsq(a, b).solution.T)
    torch.testing.assert_close(got["b"], torch.full((4,), 0.5, dtype=torch.float64))  # not a Gram: the mean
    # alpha = 0: diagonal Grams, i.e. per input feature a mean weighted by its second moment
    diag = regmean_merge(states, grams, alpha=0.0, ridge=0.0)["w"]
    d = [torch.diagonal(g["w"]) for g in grams]
    torch.testing.assert_close(diag, (ws[0] * d[0] + ws[1] * d[1]) / (d[0] + d[1]))


def test_the_ridge_pulls_toward_the_plain_mean_so_identical_ingredients_come_back():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(50, 8) * 10, torch.randn(50, 8) * 0.01], 1).double()  # badly scaled features
    state = {"w": torch.randn(4, 16, dtype=torch.float64)}
    got = regmean_merge([state] * 3, [{"w": x.T @ x / 50}] * 3, alpha=0.9, ridge=1e-2)
    torch.testing.assert_close(got["w"], state["w"])  # a ridge toward zero would shrink the small-scale columns


def test_a_singular_gram_solves_with_the_ridge_and_is_a_plain_error_without():
    x = torch.randn(10, 3, dtype=torch.float64)
    x[:, 2] = 0  # a feature that never fires
    states = [{"w": torch.randn(2, 3, dtype=torch.float64)} for _ in range(2)]
    grams = [{"w": x.T @ x / 10}] * 2
    assert torch.isfinite(regmean_merge(states, grams, 1.0, 1e-4)["w"]).all()
    with pytest.raises(BadInput, match="singular .*ridge > 0"):
        regmean_merge(states, grams, 1.0, 0.0)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, batch):
        x = self.embed(batch.input_ids if isinstance(batch, TokenBatch) else batch)
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y.mean(1))


def test_grams_cover_every_linear_map_that_runs_and_attention_in_projections():
    torch.manual_seed(0)
    model = Block()
    ids = torch.randint(1, 50, (4, 5))
    grams = gram_matrices(model, [(ids, None)], examples=4)
    assert set(grams) == {"attn.in_proj_weight", "head.weight"}  # out_proj runs inside F.multi_head_attention_forward
    x = model.embed(ids).detach().reshape(-1, 8).double()
    torch.testing.assert_close(grams["attn.in_proj_weight"], x.T @ x / len(x))
    assert grams["attn.in_proj_weight"].shape == (8, 8)


def test_padding_never_enters_a_gram():
    torch.manual_seed(0)
    model = Block()
    a, b = torch.tensor([[3, 4, 5]]), torch.tensor([[6, 7, 0]])  # b has one padding position
    padded = TokenBatch(torch.cat([a, b]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
    got = gram_matrices(model, [(padded, None)], examples=2)
    x = torch.cat([model.embed(a)[0], model.embed(b[:, :2])[0]]).detach().double()  # 5 real tokens
    torch.testing.assert_close(got["attn.in_proj_weight"], x.T @ x / 5)


def test_regmean_soup_through_soup_py(tiny_sweep, tmp_path):
    from soups.jobs.soup import run_soup

    sweep_tmp, sweep = tiny_sweep
    base = own_cache(sweep_tmp, tmp_path)
    cfg = compose_cfg("soup", base, ["logger=none", "eval_batch_size=128", f"pool.dir={sweep}",
                                     "method=[regmean]", "method.regmean.examples=16"])
    rows = {r["row"]: r for r in run_soup(cfg, tmp_path / "out")}
    assert rows["regmean soup"]["ingredients"] == 3
