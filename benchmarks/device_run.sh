#!/usr/bin/env bash
# Everything a GPU session checks, in one command, results under $OUT (default ./device-results):
#   gpu.txt             the card and its driver
#   kernel_tests.txt    tests/models/test_window_attention.py on the GPU: the kernel at full size in fp16/bf16,
#                       and its ahead-of-time PTX launched through the CUDA driver exactly as TensorRT launches it;
#                       the tensorrt backend's CUDA buffers and copies (cuda-bindings)
#   gpu_swin.json/.log  benchmarks/gpu_swin.py (kernel correctness, attention alone, eager, the torch artifact,
#                       torch.compile while the budget lasts)
# Where vitserve is not installed, the repository is laid out as the installed package under a temporary folder
# (vitserve.models / .export / .server are models/, export/, server/ in the repository).
#
#     OUT=/tmp/results BUDGET_S=360 bash benchmarks/device_run.sh
set -u
out=$(mkdir -p "${OUT:-device-results}" && cd "${OUT:-device-results}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
if python -c "import vitserve.models.window_attention" 2>/dev/null; then
    cd "$root"
else
    shim=$(mktemp -d)
    cp -r "$root/vitserve" "$shim/"
    for d in models export server; do cp -r "$root/$d" "$shim/vitserve/$d"; done
    cp -r "$root/tests" "$root/benchmarks" "$shim/"
    export PYTHONPATH="$shim"
    cd "$shim"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$out/gpu.txt" 2>&1
timeout "${TESTS_TIMEOUT:-240}" python -m pytest -q -rs --noconftest -p no:cacheprovider \
    tests/models/test_window_attention.py tests/server/test_tensorrt_engine.py::test_buffers_round_trip_on_the_gpu \
    > "$out/kernel_tests.txt" 2>&1
echo "kernel tests: exit $?" | tee -a "$out/kernel_tests.txt"
timeout "${BENCH_TIMEOUT:-420}" python benchmarks/gpu_swin.py --out "$out/gpu_swin.json" \
    --budget-s "${BUDGET_S:-360}" > "$out/gpu_swin.log" 2>&1
echo "gpu_swin: exit $?" | tee -a "$out/gpu_swin.log"
