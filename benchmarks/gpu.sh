#!/usr/bin/env bash
# All the GPU work (issue 13) in one call of at most 8 minutes, every result under $OUT:
#   1. tests/gpu: the compiled Triton kernels in float32/bfloat16/float16 against the PyTorch reference (forward and
#      backward, odd shapes, the chunked cross-entropy), the forward analyses on CUDA against the CPU, a CUDA
#      training run that checkpoints and resumes and follows the CPU run's loss;
#   2. benchmarks/train.py at 125m and 350m, sequence 2048, bf16 autocast: tokens/s, MFU and peak memory against
#      transformers' LlamaForCausalLM (SDPA), and against it with Liger-Kernel's fused ops where that is carried;
#   3. benchmarks/streaming.py on CUDA in bfloat16 (issue 19): forward analyses streamed block by block (pinned
#      host-to-device copies beside the compute) against the whole model: time, host and device peak memory;
#   4. with 2 or 8 GPUs (not on a one-GPU machine): benchmarks/train_dist.py, FSDP2 and DDP across them against
#      one GPU, 350m (issue 20).
# Before the device call, here: benchmarks/gpu-wheels.sh (the Python 3.12 wheels the GPU image lacks, into .whl/),
# then the device tool: run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540).
# Without CUDA it stops at once, exit 2.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu.sh: no CUDA device here (torch.cuda.is_available() is False): run it on a GPU machine" \
         "(benchmarks/gpu-wheels.sh here, then the device tool with carry=['.whl'])" >&2
    exit 2
fi
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__,
    "transformers", transformers.__version__, torch.cuda.get_device_name())' | tee "$OUT/versions.txt"
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" --timeout 180 tests/gpu 2>&1 | tee "$OUT/gpu-tests.txt" || status=1
timeout 240 "$PY" benchmarks/train.py --device cuda --sizes 125m,350m --seq-len 2048 --repeats 10 2>&1 \
    | tee "$OUT/train.txt" || status=1
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
for n in 2 8; do  # issue 20: FSDP2 and DDP across GPUs (NCCL, bf16), 350m, against one GPU
    [ "$gpus" -ge "$n" ] || continue
    for parallel in fsdp ddp; do
        timeout 120 "$PY" benchmarks/train_dist.py --device cuda --preset 350m --steps 30 --nproc "$n" \
            --parallel "$parallel" 2>&1 | tee -a "$OUT/train_dist.txt" || status=1
    done
done
timeout 90 "$PY" benchmarks/streaming.py --device cuda --dtype bfloat16 --tokens 16384 2>&1 \
    | tee "$OUT/streaming.txt" || status=1
exit $status
