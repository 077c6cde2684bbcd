"""Eval sets decoded once into a uint8 store: bit-identical inputs to the JPEG path, no decoding on
reuse, rebuilt when the transform changes or a build was interrupted or damaged."""
import pytest
import torch

from soups.data import build_data
from soups.data.folders import FileImages
from soups.data.store import StoredEvalSet, split_transform
from test_imagenet import imagenet_cfgs, tree  # noqa: F401  (the fake ImageNet fixture)


def file_sets(root, counts):
    return build_data(*imagenet_cfgs(root, counts)).eval_sets()  # no cache dir: the JPEG path


def count_decodes(monkeypatch) -> list:
    calls = []
    original = FileImages.__getitem__
    monkeypatch.setattr(FileImages, "__getitem__", lambda self, i: calls.append(i) or original(self, i))
    return calls


def test_stored_batches_are_bit_identical_to_decoding_every_time(tree, tmp_path, monkeypatch):  # noqa: F811
    root, counts = tree
    for name, files in file_sets(root, counts).items():
        stored = StoredEvalSet(files, tmp_path)
        for (a, la), (b, lb) in zip(files.batches(7), stored.batches(7)):
            assert torch.equal(a, b) and torch.equal(la, lb), name
        assert stored.sample_ids == files.sample_ids and stored.project_logits is files.project_logits
    decodes = count_decodes(monkeypatch)
    again = StoredEvalSet(file_sets(root, counts)["objectnet"], tmp_path)
    assert sum(len(y) for _, y in again.batches(4)) == len(again) and decodes == []  # served from the store


def test_shuffled_batches_cover_the_set_once(tree, tmp_path):  # noqa: F811
    root, counts = tree
    stored = StoredEvalSet(file_sets(root, counts)["objectnet"], tmp_path)
    plain = torch.cat([x for x, _ in stored.batches(3)])
    shuffled = torch.cat([x for x, _ in stored.batches(3, shuffle_seed=1)])
    assert sorted(map(tuple, shuffled.flatten(1)[:, :5].tolist())) == sorted(map(tuple, plain.flatten(1)[:, :5].tolist()))


def test_a_shard_of_rows_is_that_part_of_the_set_in_every_kind_of_set(tree, tmp_path):  # noqa: F811
    from soups.data import EvalSet, ImageArray

    root, counts = tree
    files = max(file_sets(root, counts).values(), key=len)
    assert len(files) >= 7
    in_memory = EvalSet(ImageArray("m", torch.randint(0, 255, (9, 12, 12), dtype=torch.uint8),
                                   torch.arange(9)), 8, (0.5,) * 3, (0.25,) * 3)
    for images in (files, StoredEvalSet(files, tmp_path), in_memory):
        whole_x, whole_y = (torch.cat(parts) for parts in zip(*images.batches(4)))
        x, y = (torch.cat(parts) for parts in zip(*images.batches(2, rows=range(3, 7))))
        assert torch.equal(x, whole_x[3:7]) and torch.equal(y, whole_y[3:7])
        with pytest.raises(ValueError, match="contiguous range within"):
            next(images.batches(2, rows=range(0, len(images) + 1)))


def test_interrupted_or_damaged_builds_are_rebuilt(tree, tmp_path, monkeypatch):  # noqa: F811
    root, counts = tree
    files = file_sets(root, counts)["imagenet_a"]
    reference = torch.cat([x for x, _ in files.batches(8)])
    stored = StoredEvalSet(files, tmp_path)
    stored.array  # build
    (stored.dir / "meta.json").unlink()  # as if killed before the build was marked complete
    assert torch.equal(torch.cat([x for x, _ in StoredEvalSet(files, tmp_path).batches(8)]), reference)
    images = stored.dir / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])  # truncated
    decodes = count_decodes(monkeypatch)
    assert torch.equal(torch.cat([x for x, _ in StoredEvalSet(files, tmp_path).batches(8)]), reference)
    assert len(decodes) == len(files)  # decoded again, once


def test_the_store_takes_its_disk_space_before_writing_and_a_full_disk_is_a_plain_error(tree, tmp_path, monkeypatch):  # noqa: F811
    import errno
    import os

    from soups.errors import Unavailable

    root, counts = tree
    stored = StoredEvalSet(file_sets(root, counts)["objectnet"], tmp_path)
    reserved, allocate = [], os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, n: reserved.append((off, n)) or allocate(fd, off, n))
    stored.array
    assert reserved == [(0, (stored.dir / "images.npy").stat().st_size)]  # the whole file, before any row

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    fresh = StoredEvalSet(file_sets(root, counts)["objectnet"], tmp_path / "small_disk")
    with pytest.raises(Unavailable, match=r"objectnet: the eval-set store needs .* GB .* free"):
        fresh.array
    assert [p.name for p in fresh.dir.iterdir()] == [".lock"]  # no temp file, no meta.json left behind


def test_a_different_transform_gets_its_own_store(tree, tmp_path):  # noqa: F811
    from open_clip import image_transform

    root, counts = tree
    files = file_sets(root, counts)["imagenet_a"]
    small = StoredEvalSet(files, tmp_path)
    files.transform = image_transform(24, is_train=False)
    other = StoredEvalSet(files, tmp_path)
    assert other.dir != small.dir and other.array.shape[-1] == 24 and small.array.shape[-1] == 32


def test_only_tensor_normalize_transforms_can_be_stored():
    from torchvision import transforms as T

    with pytest.raises(ValueError, match="ToTensor"):
        split_transform(T.Compose([T.Resize(8)]))
    pil, mean, std = split_transform(T.Compose([T.Resize(8), T.ToTensor(), T.Normalize([0.5] * 3, [0.2] * 3)]))
    assert len(pil.transforms) == 1 and mean == (0.5,) * 3 and std == (0.2,) * 3


def test_imagenet_data_stores_its_eval_sets_under_the_cache_dir(tree, tmp_path):  # noqa: F811
    root, counts = tree
    sets = build_data(*imagenet_cfgs(root, counts), cache_dir=tmp_path).eval_sets()
    assert all(isinstance(s, StoredEvalSet) for s in sets.values())
    next(sets["val"].batches(4))
    assert len(list((tmp_path / "evalsets").glob("val-*/images.npy"))) == 1


def test_prefetched_batches_equal_plain_ones_and_stop_cleanly():
    from soups.data.images import ImageArray, EvalSet, batch_indices, serve_batches

    images = torch.randint(0, 256, (23, 8, 8, 3), dtype=torch.uint8)
    data = EvalSet(ImageArray("toy", images, torch.arange(23) % 5), 8, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    fetch = lambda take: (data.images[take], data.labels[take])  # noqa: E731
    plain = list(serve_batches(batch_indices(23, 4, 3), fetch, data.normalize, "cpu", prefetch=0))
    ahead = list(serve_batches(batch_indices(23, 4, 3), fetch, data.normalize, "cpu", prefetch=2))
    assert len(plain) == len(ahead) == 6
    for (a, la), (b, lb) in zip(plain, ahead):
        assert torch.equal(a, b) and torch.equal(la, lb)
    first = serve_batches(batch_indices(23, 4), fetch, data.normalize, "cpu", prefetch=2)
    next(first)
    first.close()  # early rejection stops a pass mid-way: the reader thread must not hang
