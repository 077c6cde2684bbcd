"""Soups against ensembles, analytically (the paper's Section 4): for every pair of ingredients θ0, θ1, the
loss of the soup θα = (1−α)θ0 + αθ1 minus the loss of the logit ensemble (1−α)f(x;θ0) + αf(x;θ1), next to
its second-order approximation

    L_soup(α) − L_ens(α) ≈ α(1−α)/2 · ( −d²L_soup/dα² + β² E_x Var_{Y∼softmax(β f(x;θα))}[Δf_Y(x)] ),

with L the cross-entropy of softmax(β · logits) (β an inverse temperature) and Δf = f(x;θ1) − f(x;θ0).
The first term is the loss's curvature along the path (a convex path favours the soup), the second the
spread of the logit change under the soup's own predictive distribution (a confident soup leaves the
ensemble little to gain). Derivation (docs/analyses.md): the ensemble's logits are the soup's plus
α(1−α)/2 · h''(α) to second order, h(α) = f(x;θα); a first-order expansion of the loss in that difference,
the chain rule d²L/dα² = β ∇ℓ·h'' + β² h'ᵀ(diag p − ppᵀ)h', and h' ≈ Δf (exact at α = ½ for a quadratic h)
give the formula. d²L/dα² is a central difference of soups at α ± `delta`; the same soups give the path's own
slope h'(α), recorded as a second form of the approximation (`predicted_path`) that does not need α = ½."""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

from soups import plots
from soups.analyses import Analysis, correlation, require_pairs
from soups.averaging import average
from soups.errors import BadInput
from soups.names import DISPLAY_NAMES, TEST

log = logging.getLogger(__name__)
MIN_DELTA = 1e-3  # float32 logits: below ~1e-3 their rounding, divided by δ², swamps the curvature


def loss(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> float:
    """Mean cross-entropy of softmax(β · logits) ([N, C] logits, [N] labels), in float64."""
    return float(F.cross_entropy(beta * logits.double(), labels))


def confidence_term(soup: torch.Tensor, change: torch.Tensor, beta: float) -> float:
    """E_x Var_{Y∼softmax(β soup_x)}[change_Y(x)]: [N, C] soup logits and logit change Δf, float64."""
    p = torch.softmax(beta * soup.double(), dim=-1)
    change = change.double()
    mean = (p * change).sum(-1, keepdim=True)
    return float((p * (change - mean) ** 2).sum(-1).mean())


def loss_gap(first: torch.Tensor, second: torch.Tensor, soups: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             labels: torch.Tensor, alpha: float, delta: float, beta: float) -> dict[str, float]:
    """The observed and approximated L_soup(α) − L_ens(α) of one pair at one β. `first`, `second`: the two
    models' logits [N, C]; `soups`: the soups' logits at α − δ, α, α + δ. `predicted` is the paper's form (the
    path's slope h' taken as Δf, exact at α = ½ for a quadratic path); `predicted_path` takes the slope from
    the soups themselves, (h(α+δ) − h(α−δ)) / 2δ. Also the terms (`curvature` d²L/dα², `confidence`
    E Var[Δf], `confidence_path` E Var[h']) and both losses."""
    ensemble = (1 - alpha) * first.double() + alpha * second.double()
    at = [loss(s, labels, beta) for s in soups]
    curvature = (at[0] - 2 * at[1] + at[2]) / delta ** 2
    confidence = confidence_term(soups[1], second - first, beta)
    confidence_path = confidence_term(soups[1], (soups[2].double() - soups[0].double()) / (2 * delta), beta)
    ensemble_loss = loss(ensemble, labels, beta)
    factor = alpha * (1 - alpha) / 2
    return {"observed": at[1] - ensemble_loss, "predicted": factor * (-curvature + beta ** 2 * confidence),
            "predicted_path": factor * (-curvature + beta ** 2 * confidence_path), "curvature": curvature,
            "confidence": confidence, "confidence_path": confidence_path, "soup_loss": at[1],
            "ensemble_loss": ensemble_loss}


@dataclass
class SoupEnsemble(Analysis):
    eval_set: str = TEST        # where the losses are measured: held-out (val), test or a shift
    alpha: float = 0.5          # the mix of the soup and the ensemble, in (0, 1)
    delta: float = 0.05         # step of the central difference d²L/dα²: soups at α − δ and α + δ (≥ MIN_DELTA)
    betas: list = field(default_factory=lambda: [0.5, 1.0, 2.0])  # inverse temperatures of the loss
    max_ingredients: int | None = None  # the best k by held-out accuracy; None: all (3 soups per pair)

    def __post_init__(self):
        super().__post_init__()
        betas = list(self.betas) if isinstance(self.betas, (list, tuple)) else None
        alpha_ok = 0 < self.alpha < 1
        wrong = [f"{name}={value!r} (expected {expected})" for name, value, ok, expected in (
            ("alpha", self.alpha, alpha_ok, "a number in (0, 1)"),
            ("delta", self.delta, not alpha_ok or MIN_DELTA <= self.delta <= min(self.alpha, 1 - self.alpha),
             f"a step in [{MIN_DELTA:g}, min(alpha, 1 − alpha)]: the soups at alpha ± delta stay between the two "
             f"models, and a smaller step divides the logits' rounding by delta²"),
            ("betas", self.betas, bool(betas) and all(_positive_number(b) for b in betas)
             and len({float(b) for b in betas}) == len(betas),
             "a non-empty list of distinct positive numbers, e.g. [1.0]")) if not ok]
        if wrong:
            raise BadInput("; ".join(wrong))
        self.betas = [float(b) for b in betas]

    def check(self, ingredients: list) -> None:
        require_pairs("soup_ensemble", ingredients, self.max_ingredients)

    def check_sets(self, names: list[str]) -> None:
        if self.eval_set not in names:
            raise BadInput(f"analysis.eval_set={self.eval_set!r}: expected one of this pool's sets ({', '.join(names)})")

    def __call__(self, pool, scorer) -> dict:
        self.check(pool.ingredients)
        self.check_sets(list(scorer.sets))
        name, alpha, delta = self.eval_set, self.alpha, self.delta
        chosen = sorted(pool.ingredients, key=lambda i: i.held_out, reverse=True)[: self.max_ingredients or None]
        alone = {i.name: scorer.outcomes({name: scorer.individual_logits(i)[name]})[name] for i in chosen}
        pairs = []
        for first, second in itertools.combinations(chosen, 2):
            states = [scorer.load(first), scorer.load(second)]
            raw = [scorer.soup_logits(average(states, [1 - a, a]), new_point=True, names=[name])
                   for a in (alpha - delta, alpha, alpha + delta)]
            soups = [scorer.outcomes(r)[name][0] for r in raw]
            (f0, labels), (f1, _) = alone[first.name], alone[second.name]
            ensemble = (1 - alpha) * f0 + alpha * f1  # over the set's classes, as the ensemble recipe averages
            pairs.append({"a": first.name, "b": second.name, "soup_accuracy": scorer.metrics_of(raw[1])[name],
                          "ensemble_accuracy": scorer.metrics_of({name: ensemble})[name],
                          "by_beta": {str(b): loss_gap(f0, f1, tuple(soups), labels, alpha, delta, b) for b in self.betas}})
            pairs[-1]["error_gap"] = pairs[-1]["ensemble_accuracy"] - pairs[-1]["soup_accuracy"]
            shown = pairs[-1]["by_beta"][str(reference_beta(self.betas))]
            log.info("pair %d/%d %s + %s: loss gap (beta %g) observed %+.4f, predicted %+.4f", len(pairs),
                     len(chosen) * (len(chosen) - 1) // 2, first.label, second.label, reference_beta(self.betas),
                     shown["observed"], shown["predicted"])
        return {"eval_set": name, "examples": len(scorer.sets[name]), "alpha": alpha, "delta": delta, "betas": self.betas,
                "ingredients": [i.name for i in chosen], "pairs": pairs, "correlations": agreement(pairs, self.betas),
                "bn_recalibrated": bool(scorer.settings_record()["bn_recalibration"]), "precision": scorer.precision}

    def summary(self, record: dict) -> str:
        c, pairs = record["correlations"], record["pairs"]
        points = [p["by_beta"][str(b)] for p in pairs for b in record["betas"]]
        same = sum(_sign(q["observed"]) == _sign(q["predicted"]) for q in points)
        lines = [f"{len(pairs)} pairs x {len(record['betas'])} temperatures on "
                 f"{DISPLAY_NAMES.get(record['eval_set'], record['eval_set'])} (alpha {record['alpha']}, "
                 f"delta {record['delta']}): soup loss minus ensemble loss, observed vs approximated",
                 f"  Pearson r {_fmt(c['pearson'])}, Spearman rho {_fmt(c['spearman'])}; same sign in {same} of "
                 f"{len(points)}; observed {min(q['observed'] for q in points):+.4f} to "
                 f"{max(q['observed'] for q in points):+.4f}",
                 "  within one temperature: Pearson r " + ", ".join(
                     f"{_fmt(c[f'pearson/beta={b:g}'])} (beta {b:g})" for b in record["betas"]),
                 "  the soup's loss below the ensemble's in " + ", ".join(
                     f"{sum(p['by_beta'][str(b)]['observed'] < 0 for p in pairs)} of {len(pairs)} pairs (beta {b:g})"
                     for b in record["betas"]),
                 f"  error gap (ensemble minus soup accuracy, points) vs approximated loss gap at beta "
                 f"{reference_beta(record['betas']):g}: Spearman rho {_fmt(c['error_spearman'])}"]
        lines.append(f"  with the path's own slope in place of the models' logit difference: Pearson r "
                     f"{_fmt(c['pearson_path'])}")
        if record["precision"] != "fp32":
            lines.append(f"  logits in {record['precision']}: the curvature's central difference divides their rounding "
                         f"by delta² ({record['delta']}); fp32 is the precision to trust it at")
        if record["bn_recalibrated"]:
            lines.append("  BN statistics are recomputed for every soup, not for the two models: the path's ends are "
                         "not the models the ensemble averages (an approximation beyond the formula's)")
        return "\n".join(lines)

    def draw(self, record: dict, path: Path, title: str) -> None:
        plt = plots.pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        pairs, betas = record["pairs"], record["betas"]
        ax = axes[0]
        for beta, color in zip(betas, plt.get_cmap("viridis")(np.linspace(0, 0.85, len(betas)))):
            ax.scatter([p["by_beta"][str(beta)]["predicted"] for p in pairs],
                       [p["by_beta"][str(beta)]["observed"] for p in pairs], s=25, color=color, label=f"beta = {beta:g}")
        values = [p["by_beta"][str(b)][k] for p in pairs for b in betas for k in ("observed", "predicted")]
        lo, hi = min(values), max(values)
        ax.plot([lo, hi], [lo, hi], c="gray", lw=0.8, ls="--", label="observed = approximated")
        ax.axhline(0, c="gray", lw=0.5)
        ax.axvline(0, c="gray", lw=0.5)
        ax.set(xlabel="approximated: a(1-a)/2 (-d2L/da2 + beta^2 E Var[delta f])",
               ylabel="observed: soup loss - ensemble loss",
               title=f"Pearson r {_fmt(record['correlations']['pearson'])} over pairs and temperatures")
        ax.legend(fontsize=7)
        ax = axes[1]
        ref = reference_beta(betas)
        ax.scatter([p["by_beta"][str(ref)]["predicted"] for p in pairs], [p["error_gap"] for p in pairs], s=25)
        ax.axhline(0, c="gray", lw=0.5)
        ax.set(xlabel=f"approximated loss gap, beta = {ref:g}",
               ylabel="ensemble accuracy - soup accuracy (points)",
               title=f"error: Spearman rho {_fmt(record['correlations']['error_spearman'])}")
        fig.suptitle(f"{title}: {DISPLAY_NAMES.get(record['eval_set'], record['eval_set'])}, alpha {record['alpha']}",
                     fontsize=10)
        fig.tight_layout()
        plots.save(fig, path)


def agreement(pairs: list[dict], betas: list[float]) -> dict[str, float | None]:
    """Pearson and Spearman correlation of observed and approximated loss gaps over every (pair, β) point, Pearson
    within each β (the pooled figure also reads the spread between temperatures) and for the path-slope form, and
    Spearman of the error gap and the approximated loss gap at the β nearest 1 (None where undefined)."""
    observed = [p["by_beta"][str(b)]["observed"] for p in pairs for b in betas]
    predicted = [p["by_beta"][str(b)]["predicted"] for p in pairs for b in betas]
    path = [p["by_beta"][str(b)]["predicted_path"] for p in pairs for b in betas]
    first = [p["by_beta"][str(reference_beta(betas))]["predicted"] for p in pairs]
    within = {f"pearson/beta={b:g}": correlation(pearsonr, *zip(*[(p["by_beta"][str(b)]["predicted"],
                                                                  p["by_beta"][str(b)]["observed"]) for p in pairs]))
              for b in betas}
    return {"pearson": correlation(pearsonr, predicted, observed),
            "spearman": correlation(spearmanr, predicted, observed), **within,
            "pearson_path": correlation(pearsonr, path, observed),
            "error_spearman": correlation(spearmanr, first, [p["error_gap"] for p in pairs])}


def reference_beta(betas: list[float]) -> float:
    """The β nearest 1 (the loss as trained) on a log scale, the first of equals: the error panel's and log's."""
    return min(betas, key=lambda b: abs(math.log(b)))


def _positive_number(b) -> bool:
    return isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"
