"""`data=sentiment`: human-rated sentences from four domains (Hutto & Gilbert, "VADER", ICWSM 2014; the
files ship in the vaderSentiment 3.3.2 sdist, MIT, fetched by `make text-data`). Each sentence's mean
rating in [-4, 4] is binarised by sign (positive = 1), dropping |rating| < `min_abs_rating`. The
in-domain task is one domain (movie-review snippets: the Rotten Tomatoes sentences SST-2 was built from),
split by a seeded permutation into test, held-out and training sentences (a text also evaluated is never
trained on); the other domains are the
natural distribution shifts (conf/data/sentiment.yaml (shifts)). Every file is checked by its sentence count
and sha256 before use."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar, Optional

import torch

from soups.data.base import TaskData, per_class_subset
from soups.data.text import Sentences, TextSet
from soups.errors import BadInput, MissingInput
from soups.names import HELD_OUT, TEST
from soups.models.text import tokenizer_for

log = logging.getLogger(__name__)
CLASSNAMES = ["negative", "positive"]


def read_domain(path: Path, domain: str, min_abs_rating: float) -> Sentences:
    """`<id>\\t<mean rating>\\t<sentence>` lines -> labelled Sentences (ids "<domain>:<id>"); ratings with
    |rating| < min_abs_rating and ratings of 0 (no sign) dropped. Raises BadInput for a line of another layout."""
    texts, labels, ids = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise BadInput(f"{path}: not UTF-8 text ({err})") from err
    for number, line in enumerate(lines, 1):
        parts = line.split("\t", 2)
        try:
            rating = float(parts[1])
        except (IndexError, ValueError):
            raise BadInput(f"{path}:{number}: expected '<id><TAB><mean rating><TAB><sentence>', got {line[:80]!r}")
        if abs(rating) >= min_abs_rating and rating != 0:  # a rating of 0 has no sign (min_abs_rating=0)
            texts.append(parts[2])
            labels.append(int(rating > 0))
            ids.append(f"{domain}:{parts[0]}")
    return Sentences(domain, texts, torch.tensor(labels, dtype=torch.long), ids)


def checked_file(root: Path, domain: str, spec) -> Path:
    """The domain's file, after its sentence count and sha256 match `spec` (data.files.<domain>)."""
    path = root / spec.file
    if not path.is_file():
        raise MissingInput(f"{path} is missing: `make text-data` fetches the vaderSentiment 3.3.2 sdist and "
                           f"unpacks its hutto_ICWSM_2014 sentences into {root} (or set data.root)")
    raw = path.read_bytes()
    count = raw.count(b"\n") + (1 if raw and not raw.endswith(b"\n") else 0)  # lines, whatever the bytes
    digest = hashlib.sha256(raw).hexdigest()  # the bytes just read: one pass over the file
    if count != spec.sentences or digest != spec.sha256:
        raise BadInput(f"{path}: {count} sentences, sha256 {digest[:12]}..., expected {spec.sentences} and "
                       f"{spec.sha256[:12]}...: a different or damaged file; fetch it again "
                       f"(python scripts/get_text_data.py --force --dest {root.parent})")
    return path


def _count(value, allow_null: bool) -> bool:
    return (value is None and allow_null) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


@dataclass
class SentimentData(TaskData):
    """In-domain splits and shifts as TextSets tokenized by the model's own tokenizer (in memory: no store)."""

    modality: ClassVar[str] = "text"
    class_names: ClassVar[tuple[str, ...]] = ("negative", "positive")  # label 1: a positive mean rating
    root: str = "data/hutto_ICWSM_2014"
    in_domain: str = "movie"
    min_abs_rating: float = 0.5
    test_size: int = 2000
    val_size: int = 1000
    train_size: Optional[int] = None  # cap on the training sentences; None = all
    split_seed: int = 0
    files: dict = field(default_factory=dict)  # each domain's {file, sentences, sha256}

    def __post_init__(self):
        super().__post_init__()
        wrong = [f"data.{k}={getattr(self, k)!r}" for k, null in (("test_size", False), ("val_size", False),
                                                                  ("train_size", True)) if not _count(getattr(self, k), null)]
        if not _count(self.shifts.get("max_images"), True):
            wrong.append(f"data.shifts.max_images={self.shifts.get('max_images')!r}")
        if wrong:
            raise BadInput(f"{', '.join(wrong)}: expected integers >= 1 (sentences; null where it means all)")
        if not 0 <= self.min_abs_rating <= 4:
            raise BadInput(f"data.min_abs_rating={self.min_abs_rating!r} (expected a number in [0, 4])")
        names = self.shifts["names"]
        unknown = [n for n in [self.in_domain, *names] if n not in self.files]
        if unknown or self.in_domain in names:
            raise BadInput(f"data.in_domain={self.in_domain!r}, data.shifts.names={list(names)}: "
                           f"expected distinct domains among {list(self.files)}")

    def load(self, model_cfg, cache_dir=None) -> "SentimentData":
        names, root = self.shifts["names"], Path(self.root)
        read = {n: read_domain(checked_file(root, n, SimpleNamespace(**self.files[n])), n, float(self.min_abs_rating))
                for n in [self.in_domain, *names]}
        self.max_length = int(model_cfg.max_length)
        self.tokenizer = tokenizer_for(model_cfg)
        task = read[self.in_domain]
        order = torch.randperm(len(task), generator=torch.Generator().manual_seed(int(self.split_seed)))
        n_test, n_val = int(self.test_size), int(self.val_size)
        if n_test + n_val >= len(task):
            raise BadInput(f"data.test_size + data.val_size = {n_test + n_val} leaves no training sentences of the "
                           f"{len(task)} in {self.in_domain} with |rating| >= data.min_abs_rating="
                           f"{self.min_abs_rating}")
        # a sentence the file holds twice is trained on only where neither copy is evaluated (the movie file
        # repeats 2: one copy fell in test and the other in train)
        evaluated = {task.texts[i] for i in order[:n_test + n_val].tolist()}
        train_rows = torch.tensor([i for i in order[n_test + n_val:].tolist() if task.texts[i] not in evaluated],
                                  dtype=torch.long)
        if len(train_rows) < len(task) - n_test - n_val:
            log.info("%s: %d training sentences dropped (the same text is in held-out or test)", self.in_domain,
                     len(task) - n_test - n_val - len(train_rows))
        if self.train_size:
            train_rows = train_rows[:int(self.train_size)]
        self.test, self.val = task.take(order[:n_test]), task.take(order[n_test:n_test + n_val])
        self.train = task.take(train_rows.sort().values)
        self.shift_sets = {n: self._subsample(read[n], self.shifts.get("max_images"), int(self.shifts.get("seed", 0)))
                           for n in names}
        return self

    @staticmethod
    def _subsample(sentences: Sentences, most: int | None, seed: int) -> Sentences:
        if not most or len(sentences) <= most:
            return sentences
        rows = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))[:int(most)]
        return sentences.take(rows.sort().values)

    def _set(self, sentences: Sentences) -> TextSet:
        return TextSet(sentences, self.tokenizer, self.max_length)

    def eval_sets(self) -> dict[str, TextSet]:
        return {name: self._set(s) for name, s in {HELD_OUT: self.val, TEST: self.test, **self.shift_sets}.items()}

    def train_set(self, randaug: str | None, crop_scale: float) -> TextSet:
        if randaug or crop_scale < 1:
            raise BadInput(f"randaug={randaug!r}, crop_scale={crop_scale}: image augmentations, not for text "
                           f"(expected randaug=null, crop_scale=1.0)")
        return self._set(self.train)

    def probe_sets(self, per_class: int | None = None) -> tuple[TextSet, TextSet]:
        train = self.train
        if per_class:
            train = train.take(per_class_subset(train.labels, per_class, int(self.split_seed)))
        return self._set(train), self._set(self.val)

    def bn_set(self) -> None:
        return None  # transformer encoders have LayerNorm only
