"""`data=sentiment`: human-rated sentences from four domains (Hutto & Gilbert, "VADER", ICWSM 2014; the
files ship in the vaderSentiment 3.3.2 sdist, MIT, fetched by `make text-data`). Each sentence's mean
rating in [-4, 4] is binarised by sign (positive = 1), dropping |rating| < `min_abs_rating`. The
in-domain task is one domain (movie-review snippets: the Rotten Tomatoes sentences SST-2 was built from),
split by a seeded permutation into test, held-out and training sentences; the other domains are the
natural distribution shifts (conf/data/sentiment.yaml (shifts)). Every file is checked by its sentence count
and sha256 before use."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from soups.data.base import TaskData, per_class_subset
from soups.data.text import Sentences, TextSet
from soups.errors import BadInput, MissingInput
from soups.names import HELD_OUT, TEST
from soups.models.text import tokenizer_for

CLASSNAMES = ["negative", "positive"]


def read_domain(path: Path, domain: str, min_abs_rating: float) -> Sentences:
    """`<id>\\t<mean rating>\\t<sentence>` lines -> labelled Sentences (ids "<domain>:<id>"); ratings with
    |rating| < min_abs_rating dropped. Raises BadInput for a line of another layout."""
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
        if abs(rating) >= min_abs_rating:
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


def _sizes_problems(data_cfg, shifts_cfg) -> list[str]:
    def count(value, allow_null: bool) -> bool:
        return (value is None and allow_null) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)

    wrong = [f"data.{k}={data_cfg.get(k)!r}" for k, null in (("test_size", False), ("val_size", False),
                                                            ("train_size", True)) if not count(data_cfg.get(k), null)]
    if not count(shifts_cfg.get("max_images"), True):
        wrong.append(f"data.shifts.max_images={shifts_cfg.get('max_images')!r}")
    rating = data_cfg.get("min_abs_rating")
    if not isinstance(rating, (int, float)) or isinstance(rating, bool) or not 0 <= rating <= 4:
        wrong.append(f"data.min_abs_rating={rating!r} (expected a number in [0, 4])")
    return wrong


class SentimentData(TaskData):
    """In-domain splits and shifts as TextSets tokenized by the model's own tokenizer."""

    modality = "text"

    def __init__(self, data_cfg, model_cfg, cache_dir=None):  # tokenized in memory: no store
        shifts_cfg = data_cfg.shifts
        wrong = _sizes_problems(data_cfg, shifts_cfg)
        if wrong:
            raise BadInput(f"{', '.join(wrong)}: expected integers >= 1 (sentences; null where it means all)")
        domains = dict(data_cfg.files)
        unknown = [n for n in [data_cfg.in_domain, *shifts_cfg.names] if n not in domains]
        if unknown or data_cfg.in_domain in shifts_cfg.names:
            raise BadInput(f"data.in_domain={data_cfg.in_domain!r}, data.shifts.names={list(shifts_cfg.names)}: "
                           f"expected distinct domains among {list(domains)}")
        root = Path(data_cfg.root)
        read = {n: read_domain(checked_file(root, n, domains[n]), n, float(data_cfg.min_abs_rating))
                for n in [data_cfg.in_domain, *shifts_cfg.names]}
        self.cfg, self.max_length = data_cfg, int(model_cfg.max_length)
        self.tokenizer = tokenizer_for(model_cfg)
        task = read[data_cfg.in_domain]
        order = torch.randperm(len(task), generator=torch.Generator().manual_seed(int(data_cfg.split_seed)))
        n_test, n_val = int(data_cfg.test_size), int(data_cfg.val_size)
        if n_test + n_val >= len(task):
            raise BadInput(f"data.test_size + data.val_size = {n_test + n_val} leaves no training sentences of the "
                           f"{len(task)} in {data_cfg.in_domain} with |rating| >= data.min_abs_rating="
                           f"{data_cfg.min_abs_rating}")
        train_rows = order[n_test + n_val:]
        if data_cfg.get("train_size"):
            train_rows = train_rows[:int(data_cfg.train_size)]
        self.test, self.val = task.take(order[:n_test]), task.take(order[n_test:n_test + n_val])
        self.train = task.take(train_rows.sort().values)
        self.shifts = {n: self._subsample(read[n], shifts_cfg.get("max_images"), int(shifts_cfg.seed))
                       for n in shifts_cfg.names}

    @staticmethod
    def _subsample(sentences: Sentences, most: int | None, seed: int) -> Sentences:
        if not most or len(sentences) <= most:
            return sentences
        rows = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))[:int(most)]
        return sentences.take(rows.sort().values)

    def _set(self, sentences: Sentences) -> TextSet:
        return TextSet(sentences, self.tokenizer, self.max_length)

    def eval_sets(self) -> dict[str, TextSet]:
        return {name: self._set(s) for name, s in {HELD_OUT: self.val, TEST: self.test, **self.shifts}.items()}

    def train_set(self, randaug: str | None, crop_scale: float) -> TextSet:
        if randaug or crop_scale < 1:
            raise BadInput(f"randaug={randaug!r}, crop_scale={crop_scale}: image augmentations, not for text "
                           f"(expected randaug=null, crop_scale=1.0)")
        return self._set(self.train)

    def probe_sets(self, per_class: int | None = None) -> tuple[TextSet, TextSet]:
        train = self.train
        if per_class:
            train = train.take(per_class_subset(train.labels, per_class, int(self.cfg.split_seed)))
        return self._set(train), self._set(self.val)

    def bn_set(self) -> None:
        return None  # transformer encoders have LayerNorm only
