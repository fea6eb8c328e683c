#!/usr/bin/env bash
# Everything a GPU session checks, in one command, results under $OUT (default ./device-results), eight files (the
# device machine returns at most eight):
#   probe.txt, probe-small.pt2
#                       benchmarks/aoti_load_probe.py (whether and how PyTorch loads an AOTInductor package in a
#                       fresh process; the native stack of a crash), started first, in the background, within
#                       PROBE_S (default 150: no new case after it; PROBE_CASES picks its cases, default all),
#                       while the kernel tests run
#   kernel_tests.txt    the card, its driver, torch and triton; then the suite's GPU tests:
#                       tests/test_kernels.py (the kernel at full size in fp16/bf16, and its
#                       ahead-of-time PTX launched through the CUDA driver exactly as TensorRT launches it); the
#                       tensorrt backend's CUDA buffers and copies (cuda-bindings); last, if the probe's package
#                       loaded and time is left, the CUDA torch packages (fp16, fused kernel, CUDA graphs; fp8;
#                       PACKAGE_TESTS=first: before the benchmarks instead, within 300 s; =0: not at all)
#   gpu_swin-*.json     benchmarks/gpu_swin.py after the probe has ended, one process per model so that a crash costs
#                       only that model's remaining steps: kernel correctness and attention alone (first), then per
#                       model eager, torch.compile, the deploy form compiled with CUDA graphs (Swin-T, ViT-B/16),
#                       vitserve's torch artifact (-swin, -vit, -deit); last, while the time lasts, what the GEMMs
#                       can still give, ViT-B/16 first, then Swin-T (-gemm): the --dtype fp8 artifacts, then per
#                       model fp8 GEMMs in the deploy form compiled and Inductor's GEMM autotuning. The artifact
#                       steps run only where the probe's package loaded in a fresh process, by PyTorch's package
#                       loader or by the container runner the export falls back to (its summary line: plain=ran or
#                       runner=ran): where neither loads any CUDA package, they would cost minutes to show that
#                       crash again
#   gpu_serve.json      benchmarks/gpu_serve.py (GPU_SERVE=0: not run), after the swin process, within GPU_SERVE_S
#                       (default 180): `vitserve serve` with the Swin-T torch artifact that process exported, JPEGs
#                       decoded on the GPU, driven over HTTP at 1, 16 and 64 images per request; the served images/s
#                       against the artifact's own at the server's batch size, the latency of a 1-image request.
#                       It takes probe-small.pt2's place among the eight files
#   gpu_swin.log        the probe's, the exports ahead's (below) and the benchmarks' output, one after the other
# A crash in native code prints the Python stack of every thread (PYTHONFAULTHANDLER).
# TOTAL_S (default 560) bounds the whole script; each benchmark process starts no new step in its last 60 seconds.
# A run can be narrowed to what is still unmeasured: PROBE=0 (no probe; the artifact steps run, the export's own
# verification decides whether a package loads), KERNEL_TESTS=0, PACKAGE_TESTS (above), SWIN_SECTIONS /
# VIT_SECTIONS / DEIT_SECTIONS / GEMM_SECTIONS (gpu_swin.py --sections for that process; empty: the process is not
# started) and GPU_SWIN_ARGS (more options for every gpu_swin.py process, e.g. --compile-batches 256,1).
# Before the benchmark processes, the artifacts their package and fp8-package sections time are exported all at
# once (gpu_swin.py --export-ahead: compiling, process start-up and verification, minutes each on the H100 machine,
# side by side on its 16 cores; nothing is timed meanwhile); EXPORT_AHEAD=0 leaves each to its own benchmark
# process.
# DRY_RUN=1: the same steps on the CPU with the small swin_digits model in place of each of the three, small
# batches, and pytest only collecting the GPU tests: a check of this script (the test suite runs it).
# Where vitserve is not installed, the repository is laid out as the installed package under a temporary folder
# (vitserve.models / .export / .server are models/, export/, server/ in the repository).
#
#     OUT=/tmp/results TOTAL_S=560 bash benchmarks/device_run.sh
set -u
started=$SECONDS
export PYTHONFAULTHANDLER=1
out=$(mkdir -p "${OUT:-device-results}" && cd "${OUT:-device-results}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
if python -c "import vitserve.kernels.window_attention" 2>/dev/null; then
    cd "$root"
else
    shim=$(mktemp -d)
    cp -r "$root/vitserve" "$shim/"
    for d in models export server; do cp -r "$root/$d" "$shim/vitserve/$d"; done
    cp -r "$root/tests" "$root/benchmarks" "$root/examples" "$shim/"
    export PYTHONPATH="$shim"
    cd "$shim"
fi
if [[ ${DRY_RUN:-0} == 1 ]]; then
    device=cpu swin=swin_digits vit=swin_digits deit=swin_digits sizes=(--batches 1,4 --compile-batches 4)
    serve_sizes=(--images-per-request 1,4 --concurrency 1,2 --seconds 1 --single 10 --processes 2 --max-batch-size 4
                 --decode device)  # on the CPU: the path a GPU takes by default
    collect=(--collect-only)
else
    device=cuda swin=swin_tiny_patch4_window7_224 vit=vit_base_patch16_224 deit=deit_small_patch16_224 sizes=()
    serve_sizes=(--images-per-request 1,16,64 --concurrency 4,16,64 --seconds 8 --single 200 --processes 12)
    collect=()
fi
left() { echo $(( ${TOTAL_S:-560} - (SECONDS - started) )); }
work=$(mktemp -d)  # the probe's package and the exported artifacts
trap 'rm -rf "$work" "${shim:-}"' EXIT
echo "== probe" > "$out/gpu_swin.log"
if [[ ${PROBE:-1} == 1 ]]; then
    timeout $(( ${PROBE_S:-150} + 150 )) python benchmarks/aoti_load_probe.py --device "$device" \
        --out "$out/probe.txt" --budget-s "${PROBE_S:-150}" ${PROBE_CASES:+--cases "$PROBE_CASES"} \
        --workdir "$work/probe" > /dev/null 2>> "$out/gpu_swin.log" &
    probe=$!
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/kernel_tests.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    >> "$out/kernel_tests.txt" 2>&1
gpu_tests() {  # gpu_tests SECONDS TESTS...: pytest in a process of its own (a crash leaves the other's results)
    timeout "$1" python -m pytest -q -n 0 -rA --tb=short -p no:logging -p no:cacheprovider "${collect[@]}" "${@:2}" \
        >> "$out/kernel_tests.txt" 2>&1
    echo "GPU tests ${*:2}: exit $? after $((SECONDS - started)) s" | tee -a "$out/kernel_tests.txt"
}
if [[ ${KERNEL_TESTS:-1} == 1 ]]; then
    gpu_tests 150 tests/test_kernels.py \
        tests/runtimes/test_tensorrt_runtime.py::test_buffers_round_trip_on_the_gpu
fi
if [[ ${PROBE:-1} == 1 ]]; then
    wait "$probe"
    echo "probe: exit $? after $((SECONDS - started)) s" | tee -a "$out/gpu_swin.log"
else
    echo "probe: not run (PROBE=0): the artifact steps run" >> "$out/gpu_swin.log"
fi
if [[ ${PROBE:-1} == 0 ]] || grep -qE "summary: .*(plain|runner)=ran" "$out/probe.txt" 2>/dev/null; then
    loads=1 package=",package" profile=",profile" gemm="fp8,fp8-package,deploy-autotune,autotune"
else
    loads=0 package="" profile="" gemm="fp8,deploy-autotune"
    echo "the probe's package loaded in a fresh process neither by PyTorch's package loader nor by the container" \
        "runner: the torch artifact's steps are left out" \
        | tee -a "$out/gpu_swin.log"
fi
package_tests() {  # package_tests SECONDS: the CUDA torch packages' GPU tests (export, verify, serve; fp16, fp8)
    gpu_tests "$1" tests/export/test_torch_package.py::test_cuda_fp16_package_with_cuda_graphs \
        tests/export/test_torch_package.py::test_cuda_fp8_package
}
if (( loads )) && [[ ${PACKAGE_TESTS:-last} == first ]]; then
    package_tests $(( $(left) < 310 ? $(left) - 10 : 300 ))  # the benchmarks keep what is left
fi
bench() {  # bench NAME ARGS...: one gpu_swin.py process, within what is left of TOTAL_S
    local name=$1 left
    left=$(left)
    shift
    echo "== $name" >> "$out/gpu_swin.log"
    if [[ -z ${!#} ]]; then echo "$name: not run, no sections" | tee -a "$out/gpu_swin.log"; return; fi
    if (( left < 30 )); then echo "$name: not run, ${left} s left" | tee -a "$out/gpu_swin.log"; return; fi
    # shellcheck disable=SC2086  # GPU_SWIN_ARGS: options for every gpu_swin.py process, split on spaces
    timeout "$left" python benchmarks/gpu_swin.py --device "$device" "${sizes[@]}" --out "$out/gpu_swin-$name.json" \
        --workdir "$work/artifacts" --budget-s $((left - 60)) "$@" ${GPU_SWIN_ARGS:-} >> "$out/gpu_swin.log" 2>&1
    echo "$name: exit $? after $((SECONDS - started)) s" | tee -a "$out/gpu_swin.log"
}
swin_sections=${SWIN_SECTIONS-correctness,attention,eager,compile,deploy$package$profile}
vit_sections=${VIT_SECTIONS-eager,compile,deploy$package}
deit_sections=${DEIT_SECTIONS-eager,compile$package}
gemm_sections=${GEMM_SECTIONS-$gemm}
ahead=""  # the artifacts the package and fp8-package sections time: exported all at once before any timing
add_ahead() { if [[ ,$ahead, != *,$1,* ]]; then ahead+="${ahead:+,}$1"; fi; }
for pair in "$swin $swin_sections" "$vit $vit_sections" "$deit $deit_sections"; do
    read -r model sections <<< "$pair"
    if [[ ,$sections, == *,package,* ]]; then add_ahead "$model"; fi
done
if [[ ,$gemm_sections, == *,fp8-package,* ]]; then add_ahead "$vit:fp8"; add_ahead "$swin:fp8"; fi
if [[ -n $ahead && ${EXPORT_AHEAD:-1} == 1 ]]; then
    echo "== export ahead" >> "$out/gpu_swin.log"
    # shellcheck disable=SC2086  # GPU_SWIN_ARGS, as in bench(): its --batches are the artifacts' buckets
    timeout "$(left)" python benchmarks/gpu_swin.py --export-ahead "$ahead" --device "$device" "${sizes[@]}" \
        --workdir "$work/artifacts" ${GPU_SWIN_ARGS:-} >> "$out/gpu_swin.log" 2>&1
    echo "export ahead ($ahead): exit $? after $((SECONDS - started)) s" | tee -a "$out/gpu_swin.log"
fi
bench swin --models "$swin" --sections "$swin_sections"
serve_bench() {  # benchmarks/gpu_serve.py on the Swin torch artifact the swin process exported, within GPU_SERVE_S
    local artifact budget
    artifact=$(ls -d "$work/artifacts/$swin-"* 2>/dev/null | grep -v -e autotune -e no-graphs -e fp8 | head -1)
    budget=$(( $(left) < ${GPU_SERVE_S:-180} ? $(left) : ${GPU_SERVE_S:-180} ))
    echo "== serve" >> "$out/gpu_swin.log"
    if [[ -z $artifact ]]; then echo "serve: not run, no torch artifact of $swin" | tee -a "$out/gpu_swin.log"; return; fi
    if (( budget < 60 )); then echo "serve: not run, ${budget} s left" | tee -a "$out/gpu_swin.log"; return; fi
    rm -f "$out/probe-small.pt2"  # eight files come back: the served figures take the probe's package's place
    timeout "$budget" python benchmarks/gpu_serve.py "$artifact" --device "$device" --backend torch \
        "${serve_sizes[@]}" --out "$out" --log "$work/serve.log" >> "$out/gpu_swin.log" 2>&1
    echo "serve: exit $? after $((SECONDS - started)) s" | tee -a "$out/gpu_swin.log"
    tail -n 40 "$work/serve.log" >> "$out/gpu_swin.log" 2>/dev/null
}
if [[ ${GPU_SERVE:-1} == 1 ]]; then serve_bench; fi
bench vit --models "$vit" --sections "$vit_sections"
bench deit --models "$deit" --sections "$deit_sections"
bench gemm --models "$vit,$swin" --sections "$gemm_sections"
if (( loads && $(left) > 120 )) && [[ ${PACKAGE_TESTS:-last} == last ]]; then
    package_tests $(( $(left) - 10 ))
fi
