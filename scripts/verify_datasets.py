"""Report, for ImageNet and every shift set, whether it is found, its image count and the expected count.

    python scripts/verify_datasets.py [--root DATA_ROOT]      # default: $SOUPS_DATA or ./data

Exit code 0 when everything matches, 1 otherwise. Uses the same loaders and checks as the runs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from soups.data.folders import DatasetLayoutError, imagenet_split, scan_class_folders
from soups.data.imagenet_shifts import BUILDERS

ROOT = Path(__file__).resolve().parents[1]


def count_files(folder: Path) -> int:
    return len(scan_class_folders(str(folder))) if folder.is_dir() else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("SOUPS_DATA", ROOT / "data")))
    args = parser.parse_args(argv)
    data = OmegaConf.load(ROOT / "conf/data/imagenet.yaml")
    shifts = OmegaConf.load(ROOT / "conf/data/imagenet.yaml").shifts
    rows, ok = [], True

    def check(name, folder, run):
        nonlocal ok
        try:
            found = len(run())
            rows.append((name, "ok", found, folder))
        except DatasetLayoutError as err:
            ok = False
            status = "missing" if not (args.root / folder).exists() else "mismatch"
            rows.append((name, status, count_files(args.root / folder), str(err).splitlines()[0]))

    check("imagenet train", data.train_dir,
          lambda: imagenet_split(args.root, data.train_dir, data.expected_train_images)[0])
    val_dir = next((d for d in data.val_dirs if (args.root / d).is_dir()), data.val_dirs[0])
    check("imagenet val", val_dir, lambda: imagenet_split(args.root, val_dir, data.expected_val_images)[0])
    for name in data.shifts.names:
        folders = [data.shifts.folders[name], *shifts.get("alt_folders", {}).get(name, [])]
        folder = next((f for f in folders if (args.root / f).is_dir()), folders[0])
        check(name, folder, lambda: BUILDERS[name](args.root / folder, None, data.shifts.expected[name], 0))
    print(f"data root: {args.root}\n")
    print(f"{'dataset':<16} {'status':<9} {'images':>9}  detail")
    for name, status, found, detail in rows:
        print(f"{name:<16} {status:<9} {found:>9}  {detail}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
