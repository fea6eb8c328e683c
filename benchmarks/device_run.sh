#!/usr/bin/env bash
# Everything a GPU session checks, in one command, results under $OUT (default ./device-results), six files (the
# device machine returns at most eight):
#   kernel_tests.txt    the card, its driver, torch and triton; then the suite's GPU tests:
#                       tests/models/test_window_attention.py (the kernel at full size in fp16/bf16, and its
#                       ahead-of-time PTX launched through the CUDA driver exactly as TensorRT launches it); the CUDA
#                       torch package (fp16, fused kernel, CUDA graphs); the tensorrt backend's CUDA buffers and
#                       copies (cuda-bindings)
#   gpu_swin-*.json     benchmarks/gpu_swin.py, one process per model so that a crash costs only that model's
#                       remaining steps: kernel correctness and attention alone (first), then per model eager,
#                       torch.compile, the deploy form compiled with CUDA graphs (Swin-T, ViT-B/16), vitserve's
#                       torch artifact (-swin, -vit, -deit); last, the artifact with
#                       --max-autotune for Swin-T and ViT-B/16 while the time lasts (-autotune)
#   gpu_swin.log        their output, one after the other
# A crash in native code prints the Python stack of every thread (PYTHONFAULTHANDLER).
# TOTAL_S (default 560) bounds the whole script: the tests get at most TESTS_TIMEOUT (default 150) of it, the
# benchmarks the rest; each starts no new step in its last 60 seconds.
# Where vitserve is not installed, the repository is laid out as the installed package under a temporary folder
# (vitserve.models / .export / .server are models/, export/, server/ in the repository).
#
#     OUT=/tmp/results TOTAL_S=560 bash benchmarks/device_run.sh
set -u
started=$SECONDS
export PYTHONFAULTHANDLER=1
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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/kernel_tests.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    >> "$out/kernel_tests.txt" 2>&1
gpu_tests() {  # pytest on the given tests, within TESTS_TIMEOUT of the script's start; its own process, so that
    local left=$(( ${TESTS_TIMEOUT:-150} - (SECONDS - started) ))  # a crash in one set leaves the other's results
    timeout "$left" python -m pytest -q -rA --tb=short -p no:logging -p no:cacheprovider "$@" \
        >> "$out/kernel_tests.txt" 2>&1
    echo "GPU tests $*: exit $? after $((SECONDS - started)) s" | tee -a "$out/kernel_tests.txt"
}
gpu_tests tests/models/test_window_attention.py tests/server/test_tensorrt_engine.py::test_buffers_round_trip_on_the_gpu
gpu_tests tests/export/test_torch_package.py::test_cuda_fp16_package_with_cuda_graphs
bench() {  # bench NAME ARGS...: one gpu_swin.py process, within what is left of TOTAL_S
    local name=$1 left=$(( ${TOTAL_S:-560} - (SECONDS - started) ))
    shift
    echo "== $name" >> "$out/gpu_swin.log"
    if (( left < 30 )); then echo "$name: not run, ${left} s left" | tee -a "$out/gpu_swin.log"; return; fi
    timeout "$left" python benchmarks/gpu_swin.py --out "$out/gpu_swin-$name.json" --budget-s $((left - 60)) "$@" \
        >> "$out/gpu_swin.log" 2>&1
    echo "$name: exit $? after $((SECONDS - started)) s" | tee -a "$out/gpu_swin.log"
}
bench swin --models swin_tiny_patch4_window7_224 --sections correctness,attention,eager,compile,deploy,package,profile
bench vit --models vit_base_patch16_224 --sections eager,compile,deploy,package --compile-batches 256
bench deit --models deit_small_patch16_224 --sections eager,compile,package --compile-batches 256
bench autotune --models swin_tiny_patch4_window7_224,vit_base_patch16_224 --sections autotune
