#!/usr/bin/env bash
# Fill benchmarks/gpu/_release/ (git-ignored; nothing in it is committed) for benchmarks/gpu/speed_vs_release.py and
# benchmarks/gpu/release_tokens_fixture.py:
#   _release/BAR/     the authors' release, github.com/amazon-far/BAR at commit faf903f ("update readme"), extracted
#   _release/wheels/  einops (pure Python): the release's generator imports it; the GPU machine's image lacks it
# The release comes from $BAR_RELEASE_MIRROR (a git dir holding the commit; default: this workplace's snapshot
# /work/.mirror/undefined443+BAR/repo), else from a clone of https://github.com/amazon-far/BAR. einops: pip download
# from PyPI ($PIP, default .venv/bin/pip). About 0.8 MB in all: carry it to the GPU machine (README, "Speed").
#
#     bash benchmarks/gpu/prepare_release.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=benchmarks/gpu/_release
COMMIT=faf903f6e5593f39ab9d6da5c762ffb57a989a34
EINOPS=einops==0.8.2
MIRROR=${BAR_RELEASE_MIRROR:-/work/.mirror/undefined443+BAR/repo}
mkdir -p "$DEST/wheels"
if [ ! -f "$DEST/BAR/modeling/generator.py" ]; then
  rm -rf "$DEST/BAR" && mkdir -p "$DEST/BAR"
  if git -C "$MIRROR" cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
    git -C "$MIRROR" archive "$COMMIT" | tar -x -C "$DEST/BAR"
  else
    tmp=$(mktemp -d)
    git clone --quiet https://github.com/amazon-far/BAR "$tmp/BAR"
    git -C "$tmp/BAR" archive "$COMMIT" | tar -x -C "$DEST/BAR"
    rm -rf "$tmp"
  fi
fi
echo "$COMMIT" > "$DEST/BAR/RELEASE_COMMIT"
if ! ls "$DEST"/wheels/einops-*.whl >/dev/null 2>&1; then
  "${PIP:-.venv/bin/pip}" download --quiet --no-deps --only-binary :all: -d "$DEST/wheels" "$EINOPS"
fi
ls "$DEST" "$DEST/wheels"
du -sh "$DEST"
