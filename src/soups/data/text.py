"""Labelled sentences, tokenized once with the model's own tokenizer and served in dynamically padded
batches: the text counterpart of soups/data/images.py, for evaluation and for fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from soups.data.images import batch_indices
from soups.models.text import TokenBatch, pad


@dataclass
class Sentences:
    """`texts`: N strings; `labels`: int64 [N]; `ids`: N strings naming each sentence in its source
    (e.g. "movie:17"), so cached predictions follow a sentence through any subset."""
    name: str
    texts: list[str]
    labels: torch.Tensor
    ids: list[str]

    def __post_init__(self):
        if not len(self.texts) == len(self.labels) == len(self.ids):
            raise ValueError(f"{self.name}: {len(self.texts)} texts, {len(self.labels)} labels, {len(self.ids)} ids")

    def __len__(self):
        return len(self.labels)

    def take(self, rows: torch.Tensor) -> "Sentences":
        rows = rows.tolist()
        return Sentences(self.name, [self.texts[i] for i in rows], self.labels[rows], [self.ids[i] for i in rows])


class TextSet(torch.utils.data.Dataset):
    """Sentences tokenized once (truncated to `max_length` tokens) and kept in order of token length,
    so a batch pads little; `labels` and `sample_ids` follow that order. For evaluation, `.batches`
    yields (TokenBatch [B, L], labels [B]); for fine-tuning, items are (ids [L], label) and `collate`
    pads a batch of them."""

    def __init__(self, source: Sentences, tokenizer, max_length: int):
        encoded = tokenizer(source.texts, truncation=True, max_length=int(max_length))["input_ids"]
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        self.name = source.name
        self.token_ids = [torch.tensor(encoded[i], dtype=torch.long) for i in order]
        self.labels = source.labels[order]
        self.sample_ids = [source.ids[i] for i in order]
        self.pad_id = int(tokenizer.pad_token_id)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.token_ids[i], self.labels[i]

    def collate(self, items: list) -> tuple[TokenBatch, torch.Tensor]:
        ids, labels = zip(*items)
        return pad(list(ids), self.pad_id), torch.stack(labels)

    def batches(self, batch_size: int, shuffle_seed: int | None = None, device=None, rows: range | None = None):
        """Yields (TokenBatch on `device`, labels): in length order, or shuffled by `shuffle_seed`; all
        sentences or the contiguous `rows`."""
        for take in batch_indices(len(self), batch_size, shuffle_seed, rows):
            batch, labels = self.collate([self[i] for i in take.tolist()])
            yield (batch.to(device) if device is not None else batch), labels
