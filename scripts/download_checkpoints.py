"""Fetch the paper's 72 released CLIP ViT-B/32 checkpoints and the official metadata files.

    python scripts/download_checkpoints.py --out data/model_soups_checkpoints [--models 0-71] [--jobs 4]

Resumable: partial downloads continue where they stopped (HTTP Range); complete files are skipped.
Each finished file's sha256 is recorded in `sha256.json` beside it; a file whose bytes no longer match
its record is fetched again. The official metadata (`hparam_info.json`, the result jsonl files and the
held-out mask `imagenet_98_idxs.npy`) come from the same repository; nothing of it is vendored here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

RELEASE = "https://github.com/mlfoundations/model-soups/releases/download/v0.0.2/model_{i}.pt"
RAW = "https://raw.githubusercontent.com/mlfoundations/model-soups/main/{name}"
METADATA = ["hparam_info.json", "individual_model_results.jsonl", "uniform_soup_results.jsonl",
            "greedy_soup_results.jsonl", "imagenet_98_idxs.npy"]
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, opener=urllib.request.urlopen) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming a partial file; atomic rename at the end.

    A part already as long as the file (killed between the last write and the rename) is renamed: the
    server answers its Range request with 416 and the file's size, which the part must equal. A download
    that ends short of the announced size raises and keeps the part, for the next run to resume."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = opener(request)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not have:
            raise
        total = _total_size(err.headers.get("Content-Range", ""))
        if total != have:  # the part is longer than the file (or the size is unknown): start over
            part.unlink()
            return fetch(url, dest, opener)
        os.replace(part, dest)
        return dest
    with response:
        status = getattr(response, "status", 200)
        if have and status != 206:  # server ignored the range: start over
            have = 0
        headers = getattr(response, "headers", None) or {}
        total = _total_size(headers.get("Content-Range", "")) if status == 206 else \
            int(headers.get("Content-Length") or -1)
        with open(part, "ab" if have else "wb") as f:
            while block := response.read(CHUNK):
                f.write(block)
    size = part.stat().st_size
    if total >= 0 and size != total:
        raise OSError(f"{dest.name}: {size} of {total} bytes received; the part is kept for the next run")
    os.replace(part, dest)
    return dest


def _total_size(content_range: str) -> int:
    """The full size in `Content-Range: bytes 0-99/1234` or `bytes */1234`; -1 if absent or unknown."""
    total = content_range.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else -1


def parse_models(spec: str) -> list[int]:
    out = []
    for piece in spec.split(","):
        lo, _, hi = piece.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    if any(not 0 <= i <= 71 for i in out):
        raise SystemExit(f"--models {spec}: the release has model_0 .. model_71")
    return out


def main(argv=None, opener=urllib.request.urlopen) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="0-71")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--no-metadata", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "sha256.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}

    jobs = [(RELEASE.format(i=i), args.out / f"model_{i}.pt") for i in parse_models(args.models)]
    if not args.no_metadata:
        jobs += [(RAW.format(name=name), args.out / name) for name in METADATA]

    def one(job):
        url, dest = job
        if dest.is_file() and record.get(dest.name) == sha256(dest):
            return dest.name, record[dest.name], "complete"
        fetch(url, dest, opener)
        return dest.name, sha256(dest), "downloaded"

    def save_record():  # after every finished file, so an interruption loses nothing completed
        tmp = record_path.with_name(record_path.name + ".tmp")
        tmp.write_text(json.dumps(dict(sorted(record.items())), indent=2) + "\n")
        os.replace(tmp, record_path)

    failures = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(one, job): job for job in jobs}
        for future in as_completed(futures):
            url, dest = futures[future]
            try:
                name, digest, status = future.result()
            except Exception as err:  # dropped connection, HTTP error, disk full: report, keep the rest
                failures += 1
                print(f"    failed  {dest.name}: {err!r} (run again to resume)", file=sys.stderr)
                continue
            record[name] = digest
            save_record()
            print(f"{status:>10}  {name}  {digest[:12]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
