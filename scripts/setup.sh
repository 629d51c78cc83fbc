#!/usr/bin/env bash
# One-time (and idempotent) set-up on Debian/Ubuntu: system tools, a virtualenv in .venv, the dsflow package.
# Installs the CUDA build of TensorFlow when an NVIDIA driver is present, the CPU build otherwise
# (override with DSFLOW_TF=cpu|gpu).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in sox:sox soxi:sox ffmpeg:ffmpeg espeak-ng:espeak-ng lame:lame; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
dpkg -s libsox-fmt-mp3 >/dev/null 2>&1 || need+=(libsox-fmt-mp3)
dpkg -s libopus0 >/dev/null 2>&1 || need+=(libopus0)  # the codec augmentation (opuslib loads it)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
# KenLM's lmplz and build_binary (dsflow build-lm) are compiled below; these are their build dependencies.
if [ ! -x .venv/bin/lmplz ] || [ ! -x .venv/bin/build_binary ]; then
  for pkg in cmake make g++ libboost-program-options-dev libboost-system-dev libboost-thread-dev \
             libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
fi
if ((${#need[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing system packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

py=python3
for candidate in python3 python3.13 python3.12 python3.11; do
  if command -v "$candidate" >/dev/null && "$candidate" 2>/dev/null -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    py=$candidate; break
  fi
done
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: dsflow needs Python >= 3.11 (found $("$py" --version)); install python3.11 and re-run" >&2; exit 1; }

tf=${DSFLOW_TF:-$(command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)}
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.dsflow-setup"
want="$(sha256sum pyproject.toml | cut -c1-16) $tf"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing dsflow and its Python dependencies into .venv (TensorFlow: $tf build)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$tf,slurm,dev]"
  echo "$want" > "$stamp"
fi
bash scripts/fetch_runtimes.sh  # DeepSpeech's and Coqui STT's C libraries into .venv/runtimes (dsflow.runtimes)
if [ ! -x .venv/bin/lmplz ] || [ ! -x .venv/bin/build_binary ]; then
  # The kenlm sdist on PyPI holds KenLM's full source (lm/builder included); pip only fetches it.
  echo "setup: building KenLM's lmplz and build_binary into .venv/bin"
  kenlm_tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps --no-binary kenlm kenlm==0.3.0 -d "$kenlm_tmp"
  tar xzf "$kenlm_tmp"/kenlm-0.3.0.tar.gz -C "$kenlm_tmp"
  { cmake -S "$kenlm_tmp/kenlm-0.3.0" -B "$kenlm_tmp/build" -DCMAKE_BUILD_TYPE=Release &&
    make -C "$kenlm_tmp/build" -j"$(nproc)" lmplz build_binary; } >"$kenlm_tmp/build.log" 2>&1 ||
    { tail -n 30 "$kenlm_tmp/build.log" >&2; echo "setup: building KenLM failed (log: $kenlm_tmp/build.log)" >&2; exit 1; }
  cp "$kenlm_tmp"/build/bin/lmplz "$kenlm_tmp"/build/bin/build_binary .venv/bin/
  rm -rf "$kenlm_tmp"
fi
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/snakemake --version | sed 's/^/snakemake /'))"
