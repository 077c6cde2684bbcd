#!/usr/bin/env bash
# The peer libraries, each an oracle for this project's merge arithmetic, in a venv of their
# own at .peers/ (git-ignored), never in the pinned .venv:
#   make venv && bash scripts/peers/setup.sh      # then: .venv/bin/python scripts/peers/compare.py
# Why not a plain `pip install mergekit fusion-bench`: that would download torch again with its CUDA
# libraries (GBs) and a second transformers. Instead .peers sees the pinned .venv's site-packages through a
# .pth file (appended to sys.path, after .peers' own packages: read-only, nothing there is changed), and gets
# only the two peers (--no-deps) plus the few small pure-python packages their merge code imports that the
# pinned .venv lacks (found by importing it: `peer_merge.py check`). Idempotent: a stamp records what
# was installed; rerun after `make venv` moved or rebuilt .venv and it redoes only what changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

PEERS=.peers
PINNED=.venv
PACKAGES=(mergekit==0.1.5 fusion-bench==0.2.33)
# Imported by FusionBench's generic merge code (fusion_bench.mixins / utils) and absent from .venv; pure
# python, ~17 MB. Not needed: datasets (+ pyarrow), which only its CLIP variants import (peer_merge.py skips
# their package __init__), and immutables, which mergekit.merge_methods does not import. statsmodels (+ patsy):
# the McNemar oracle of scripts/peers/stats.py (torchmetrics is its ECE oracle).
EXTRA=(bidict==0.24.1 lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0 statsmodels==0.15.0 patsy==1.0.3)
test -x "$PINNED/bin/python" || { echo "no $PINNED: run 'make venv' first" >&2; exit 1; }

purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
PINNED_SITE=$(cd "$(purelib "$PINNED")" && pwd)
WANT="${PACKAGES[*]} ${EXTRA[*]} pinned=$PINNED_SITE"
STAMP=$PEERS/.setup.stamp
check_imports() { "$PEERS/bin/python" scripts/peers/peer_merge.py check; }  # every entry point compare.py uses

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && check_imports; then
  echo "$PEERS already set up (rm -r $PEERS to redo)"; exit 0
fi
test -x "$PEERS/bin/python" || "$PINNED/bin/python" -m venv "$PEERS"   # same base interpreter as .venv
echo "$PINNED_SITE" > "$(purelib "$PEERS")/zz_pinned_venv.pth"       # torch, transformers, ... from .venv
"$PEERS/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${PACKAGES[@]}" "${EXTRA[@]}"
check_imports
echo "$WANT" > "$STAMP"
