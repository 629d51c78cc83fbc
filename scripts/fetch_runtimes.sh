#!/usr/bin/env bash
# DeepSpeech's and Coqui STT's C libraries (their runtimes) from their PyPI wheels, into .venv/runtimes/<name>/.
# The wheels exist only for old CPython; dsflow loads the plain-C libraries inside them with ctypes
# (src/dsflow/runtimes.py), so they are only downloaded (no dependencies, binary wheels only) and unpacked:
#   .venv/runtimes/deepspeech-tflite/libdeepspeech.so   DeepSpeech 0.9.3, TFLite build (.tflite models)
#   .venv/runtimes/deepspeech/libdeepspeech.so          DeepSpeech 0.9.3, TensorFlow build (.pb / .pbmm models)
#   .venv/runtimes/stt/libstt.so, libkenlm.so           Coqui STT 1.4.0 (.tflite models)
# Idempotent: a runtime already unpacked from the same pinned wheel is not fetched again. Needs only PyPI; nothing
# else downloads them (not the tests, not the workflow).
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${DSFLOW_RUNTIMES_DIR:-.venv/runtimes}
py=.venv/bin/python
[ -x "$py" ] || py=python3
mkdir -p "$dest"
# name  pip requirement  python version  platform  library folder in the wheel  library
for spec in "deepspeech-tflite deepspeech-tflite==0.9.3 3.9 manylinux1_x86_64 deepspeech/lib libdeepspeech.so" \
            "deepspeech deepspeech==0.9.3 3.9 manylinux1_x86_64 deepspeech/lib libdeepspeech.so" \
            "stt stt==1.4.0 3.10 manylinux_2_24_x86_64 stt/lib libstt.so"; do
  read -r name req pyver platform libdir lib <<<"$spec"
  # done when the library is there and came from this very requirement (WHEEL.txt names it)
  [ -f "$dest/$name/$lib" ] && [ "$(cut -d' ' -f1 "$dest/$name/WHEEL.txt" 2>/dev/null)" = "$req" ] && continue
  echo "setup: fetching the $req runtime into $dest/$name"
  tmp=$(mktemp -d "$dest/.fetch-XXXXXX")  # on the same filesystem, so the mv below is atomic
  "$py" -m pip download -q --no-deps --only-binary :all: --python-version "$pyver" --platform "$platform" \
    "$req" -d "$tmp"
  "$py" - "$tmp" "$libdir" "$tmp/lib" <<'EOF'
import sys, zipfile
from pathlib import Path

tmp, libdir, out = Path(sys.argv[1]), sys.argv[2].rstrip("/") + "/", Path(sys.argv[3])
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(libdir) and not info.is_dir():
            target = out / info.filename[len(libdir):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
EOF
  echo "$req ($(basename "$tmp"/*.whl))" >"$tmp/lib/WHEEL.txt"
  rm -rf "${dest:?}/$name"
  mv "$tmp/lib" "$dest/$name"  # complete or absent: the check above never sees half a runtime
  rm -rf "$tmp"
done
