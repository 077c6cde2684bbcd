"""A LoRA pool's soup written back as peft adapters (soups/pools/lora.py hands it to the soup job): ΔW = W_soup − W₀
per adapted module, factored by SVD, saved with peft's own save_pretrained."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from soups.io.files import write_json
from soups.models.hf import PREFIX, load_folder, save_pretrained_soup
from soups.models.lora import quiet_peft

log = logging.getLogger(__name__)
ADAPTER_PREFIX = "base_model.model."


class AdapterExport:
    """Writes a soup as a merged transformers folder (`hf/`) and as one LoRA adapter (`adapter/`): per adapted
    module, ΔW = W_soup − W0 factored by SVD at rank min(Σ rᵢ, out, in) (exact where ΔW is a combination of the
    rank-rᵢ updates, as every soup that weighs whole ingredients makes it; a recipe that merges entry by entry,
    TIES, DARE, Fisher or RegMean, gets none, with a warning; a convolution's ΔW [out, in, *kernel] is factored
    as the matrix [out, in·kernel], as peft's conv LoRA factors it),
    and at `svd_rank` if set (`adapter_rank<r>/`, its relative Frobenius error over all modules printed).
    `factors`: {adapter folder: the adapter as pools.lora.read_adapter reads it (.lora, .full, .config)}."""

    def __init__(self, model, kind: str, base_dir: Path, tokenizer_dir, base_state: dict,
                 factors: dict, svd_rank: int | None):
        self.model, self.kind, self.base_dir, self.tokenizer_dir = model, kind, base_dir, tokenizer_dir
        self.base_state, self.svd_rank = base_state, svd_rank
        self.modules = sorted({m for f in factors.values() for m in f.lora})
        self.full_keys = sorted({k for f in factors.values() for k in f.full})
        self.rank = max(1, sum(max((a.shape[0] for a, _, _ in f.lora.values()), default=0) for f in factors.values()))
        # every module any adapter trained in full (its head): saved whole in the exported adapter
        self.save_modules = sorted({k.rsplit(".", 1)[0] for k in self.full_keys})
        self.fan_in_fan_out = bool(next(iter(factors.values())).config.get("fan_in_fan_out"))

    def __call__(self, weights: dict, soup_dir: Path) -> list[Path]:
        written = [save_pretrained_soup(self.model, weights, soup_dir / "hf", self.tokenizer_dir or self.base_dir)]
        state = {k[len(PREFIX):]: v.float() if v.is_floating_point() else v  # BN's step counter stays an integer
                 for k, v in weights.items() if k.startswith(PREFIX)}
        moved = [k for k, v in state.items() if k in self.base_state and v.is_floating_point() and
                 k.removesuffix(".weight") not in self.modules and k not in self.full_keys and
                 not torch.allclose(v, self.base_state[k].float(), rtol=1e-6, atol=1e-6)]  # fp32 round-off is no move
        if moved:  # a learned soup whose coefficients do not sum to one scales W0 too; recalibrated BN statistics
            log.warning("%s: not written as an adapter: %d tensors outside the adapters moved from W0 (e.g. %s; "
                        "BatchNorm statistics recomputed by bn_recalibration are kept in an adapter only where its "
                        "layers are modules_to_save); %s/hf/ holds the soup", soup_dir.name, len(moved), moved[:2],
                        soup_dir.name)
            return written
        svds = self.decomposed(state)  # once per soup, whatever the number of ranks written
        for rank, name in [(self.rank, "adapter")] + ([(self.svd_rank, f"adapter_rank{self.svd_rank}")]
                                                        if self.svd_rank else []):
            tensors, error, exact = self.factored(svds, state, rank)
            if name == "adapter" and not exact:  # TIES, DARE, Fisher, RegMean change entries one by one
                log.warning("%s: not written as adapter/: its update is not of rank Σ r_i = %d (relative error %.2e "
                            "at that rank), as a recipe that merges entry by entry makes it; %s/hf/ holds the soup "
                            "(pool.svd_rank=r writes an approximation, its error printed)", soup_dir.name, rank, error,
                            soup_dir.name)
                continue
            self.write_adapter(tensors, rank, soup_dir / name)
            log.info("%s/%s: rank %d, relative error %.2e (||ΔW − BA||_F / ||ΔW||_F over the adapted modules)",
                     soup_dir.name, name, rank, error)
            write_json({"rank": rank, "relative_error": error}, soup_dir / name / "soups_export.json")
            written.append(soup_dir / name)
        return written

    def decomposed(self, state: dict) -> dict:
        """{adapted module: (ΔW = W_soup − W0 as stored by peft ([out, in], a convolution's [out, in, *kernel];
        float64), its SVD as the matrix [out, in·kernel] (U, S, Vᵀ), ||W_soup||²)}."""
        out = {}
        for module in self.modules:
            delta = (state[f"{module}.weight"] - self.base_state[f"{module}.weight"]).double()
            if self.fan_in_fan_out and delta.ndim == 2:
                delta = delta.T
            out[module] = (delta, torch.linalg.svd(delta.flatten(1), full_matrices=False),
                           float(state[f"{module}.weight"].double().pow(2).sum()))
        return out

    def factored(self, svds: dict, state: dict, rank: int) -> tuple[dict, float, bool]:
        """(the soup's update as rank-`rank` LoRA tensors (peft's keys, scale 1: A [r, in, *kernel], B [out, r,
        1, ...]) from `decomposed`'s SVDs, the relative Frobenius error ||ΔW − BA||_F / ||ΔW||_F over the adapted
        modules, whether it is exact: an error within 1e-4 of ||ΔW|| plus 1e-6 of the soup's ||W|| (the fp32
        round-off of W_soup − W0 where ΔW is small beside W0))."""
        tensors, err2, norm2, weight2 = {}, 0.0, 0.0, 0.0
        for module, (delta, (u, s, vh), w2) in svds.items():
            r = min(rank, len(s))
            b, a = u[:, :r] * s[:r], vh[:r]
            if r < rank:  # pad to the adapter's one rank with zero rows (no effect)
                b = torch.cat([b, b.new_zeros(b.shape[0], rank - r)], 1)
                a = torch.cat([a, a.new_zeros(rank - r, a.shape[1])], 0)
            err2 += float(((b @ a) - delta.flatten(1)).pow(2).sum())
            norm2 += float(delta.pow(2).sum())
            weight2 += w2
            a, b = a.reshape(rank, *delta.shape[1:]), b.reshape(*b.shape, *[1] * (delta.ndim - 2))
            tensors[f"{ADAPTER_PREFIX}{module}.lora_A.weight"] = a.float().contiguous()
            tensors[f"{ADAPTER_PREFIX}{module}.lora_B.weight"] = b.float().contiguous()
        for key in self.full_keys:
            tensors[ADAPTER_PREFIX + key] = state[key].contiguous()
        exact = math.sqrt(err2) <= 1e-4 * math.sqrt(norm2) + 1e-6 * math.sqrt(weight2)
        return tensors, (math.sqrt(err2 / norm2) if norm2 else 0.0), exact

    def write_adapter(self, tensors: dict, rank: int, folder: Path) -> None:
        """`tensors` (from `factored`) as a rank-`rank` LoRA adapter written by peft (lora_alpha = r: scale 1)."""
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        base = load_folder(self.base_dir, self.kind)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=self.modules, modules_to_save=self.save_modules,
                            fan_in_fan_out=self.fan_in_fan_out, lora_dropout=0.0, init_lora_weights=False)
        with quiet_peft():
            model = get_peft_model(base, config)
            result = set_peft_model_state_dict(model, tensors)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise RuntimeError(f"peft did not take {unexpected[:3]}")
            model.save_pretrained(str(folder))
