#!/usr/bin/env bash
# The CUDA checks, as one prepared run for a GPU machine (this workplace lends one to some sessions for minutes).
#
#   bash scripts/gpu_check.sh correctness OUT   # reference-parity tests on CUDA + the embedded model end to end
#   bash scripts/gpu_check.sh bench OUT         # benchmarks: embedded pipeline, and the official sizes with random
#                                               # weights (tokenizer 32 layers, GLM 40 layers, decoder)
#   bash scripts/gpu_check.sh all OUT
#   bash scripts/gpu_check.sh probe OUT         # seconds: what the machine has for making training audio there
#                                               # (TTS engines, sox, soundfile, CPUs, disk), to plan tokenizer runs
#   bash scripts/gpu_check.sh train OUT CORPUS  # 30 steps of each trainer on CUDA; CORPUS: a small corpus with its
#                                               # token cache, made where the TTS engines are (the GPU machine has
#                                               # none): glm4voice data synth --out C --num 30 && glm4voice data tokens C
#
# Needs the package importable (pip install -e . or PYTHONPATH=repo) and the reference vectors at
# $GLM4VOICE_REFERENCE or ../shared/reference. Every step has its own time limit and goes on after a failure; the
# output of each step is written to OUT/<step>.txt and a summary line per step to OUT/summary.txt.
set -uo pipefail
phase="${1:?usage: gpu_check.sh correctness|bench|all|probe|train OUT [CORPUS]}"
out="${2:?usage: gpu_check.sh correctness|bench|all|probe|train OUT [CORPUS]}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$out/summary.txt"
}

if [[ $phase == correctness || $phase == all ]]; then
    nvidia-smi -L > "$out/env.txt" 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
        >> "$out/env.txt" 2>&1
    # The numeric parity tests with every model on the GPU (tests/conftest.py: GLM4VOICE_TEST_DEVICE), at the
    # CPU's tolerances. If they fail, once more with TF32 off (cuDNN convolutions use TF32 by default) to tell
    # TF32 rounding from a real difference.
    tests="tests/test_tokenizer.py tests/test_tokenizer_stream.py tests/test_lm.py tests/test_lm_generate.py
        tests/test_decoder.py tests/test_decoder_stream.py"
    GLM4VOICE_TEST_DEVICE=cuda step parity_cuda 150 python3 -m pytest -q -p no:cacheprovider -m "not slow" \
        --tb=short -rf $tests
    if ! grep -q "parity_cuda rc=0" "$out/summary.txt"; then
        NVIDIA_TF32_OVERRIDE=0 GLM4VOICE_TEST_DEVICE=cuda step parity_cuda_no_tf32 100 python3 -m pytest -q \
            -p no:cacheprovider -m "not slow" --tb=line -rf $tests
    fi
    # The README's main command on the GPU, and a typed question answered greedily (compare with the CPU's answer).
    step chat_cuda 60 python3 -m glm4voice chat --audio examples/question.wav -o "$out/answer_cuda.wav" \
        --max-new-tokens 400 --device cuda --timings --seed 0
    step chat_text_cuda 45 python3 -m glm4voice chat --text "What is two plus three?" --text-only \
        --temperature 0 --device cuda
fi

if [[ $phase == bench || $phase == all ]]; then
    step bench_lm 150 python3 benchmarks/lm.py --device cuda --shapes slice --layers 40 --batches 1,8,32 \
        --prompt 128 --steps 16 --repeats 2
    step bench_decoder 75 python3 benchmarks/decoder.py --sizes full --device cuda --lengths 50,100,200,400 \
        --streams 1,4,16
    step bench_tokenizer 75 python3 benchmarks/tokenizer.py --device cuda --sizes full --lengths 3,10 \
        --batch-files 64 --batch-size 32
    step bench_pipeline 75 python3 benchmarks/pipeline.py --device cuda --runs 3 --sessions 1,4,16
fi

if [[ $phase == probe ]]; then
    # The tokenizer trains on audio, and corpus_v6's 63 h do not fit what a call can carry (64 MiB): can the
    # machine make the audio itself (glm4voice data synth), or must a subset be carried?
    step probe 30 bash -c 'nproc; free -g | head -2; df -h . /tmp | tail -2; cat /etc/os-release | head -2
        for b in espeak-ng flite text2wave festival sox ffmpeg; do printf "%s: " $b; command -v $b || echo missing; done
        ls /usr/share/festival/voices/*/ 2>/dev/null; ls /usr/lib/x86_64-linux-gnu/espeak-ng-data 2>/dev/null | head -3
        ldd --version | head -1
        python3 -c "import soundfile, sys; print(\"soundfile\", soundfile.__version__, sys.version)" 2>&1 | tail -1
        python3 -m pip list 2>/dev/null | grep -i -E "torch|numpy|soxr|tokenizers|tiktoken|jiwer|faster|ctranslate" '
fi

if [[ $phase == train ]]; then
    corpus="${3:?train needs a CORPUS folder}"
    step train_tokenizer 120 python3 -m glm4voice train tokenizer --corpus "$corpus" --out "$out/runs/tokenizer" \
        --steps 30 --warmup 5 --batch-size 8 --eval-every 30 --eval-size 8 --phone-weight 1.0 --pitch 4 --tilt 6 \
        --vtlp 0.08 --device cuda --precision bf16 --log-every 10
    step train_decoder 120 python3 -m glm4voice train decoder --corpus "$corpus" \
        --voice festival:cmu_us_slt_arctic_hts --out "$out/runs/decoder" --steps 30 --warmup 5 --batch-size 4 \
        --eval-every 30 --part both --device cuda --log-every 10
    step train_lm 120 python3 -m glm4voice train lm --corpus "$corpus" --init glm4voice/assets/embedded/lm \
        --out "$out/runs/lm" --steps 30 --warmup 5 --batch-size 8 --seq-len 512 --precision bf16 --device cuda \
        --eval-every 30 --eval-answers 4 --log-every 10
fi
