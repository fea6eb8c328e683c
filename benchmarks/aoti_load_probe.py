"""Where and why PyTorch fails to load an AOTInductor package in a fresh process, and what avoids it.

Compiles one small model (a 64-wide Linear + GELU, dynamic batch) with AOTInductor for the device, linked as
vitserve's export links it (the shared libstdc++ asked for where the C++ compiler would copy libstdc++ into the
shared object: export/toolchain.py; --as-torch-links compiles as PyTorch alone does), lists the package and the
libraries its shared object resolves to (ldd), then loads it in fresh Python processes, one case
each, in this order while --budget-s lasts (--cases picks some):

  plain           torch._inductor.aoti_load_package (the server's load_package makes the same loader call
                  without PyTorch's device check); under a debugger (gdb, else cuda-gdb:
                  the device image has only the latter) when one is present and can run it (the native stack of a
                  crash, the faulting instruction and its library), else with a SIGSEGV handler compiled here and
                  preloaded (glibc backtrace(): the libraries and exported functions on the stack)
  runner          the package unzipped by Python and its shared object loaded by
                  torch._C._aoti.AOTIModelContainerRunnerCuda/Cpu, without the package loader
  ld-debug        as plain, with the dynamic loader reporting (LD_DEBUG=libs) every library it initialises
                  after torch's import: what loading the package's shared object pulls in, and from where
  inductor-first  a tiny torch.compile'd function run on the device first (Inductor and Triton initialised)
  libcuda-global  the CUDA driver library loaded with RTLD_GLOBAL first (CUDA only)
  device-0        aoti_load_package(..., device_index=0) instead of the current device (CUDA only)
and last in this process, which compiled the package (same-process).

Each case prints its exit status (under a debugger, the debugger's), the seconds to its crash or answer, the
processes it started meanwhile (sampled with ps: a compiler shows here) and the end of its output; the cases that
go through aoti_load_package first time PyTorch's device check (the package loader's first step, which compiles
and runs C++ programs to find the CPU's vector extensions: about 15 s a process with torch 2.11 on two cores), so
that the time to a crash is the loader's own. Everything also goes to --out, and the package beside it
(OUT-small.pt2), so that its shared object can be examined on another machine. The last line sums up, e.g.
`summary: plain=failed runner=ran ld-debug=failed same-process=ran` (benchmarks/device_run.sh reads it).

    python benchmarks/aoti_load_probe.py --out probe.txt [--device cuda] [--budget-s 400] [--cases plain,runner]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from torch import nn

from vitserve.export import toolchain

STARTED = time.monotonic()

CHILD = r"""
import sys, time
started = time.monotonic()
path, device, case = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
def say(what):
    print(f"[{time.monotonic() - started:5.1f} s] {what}", flush=True)
say(f"torch {torch.__version__} imported")
if case == "inductor-first":
    f = torch.compile(lambda x: (x * 2).sin())
    f(torch.randn(8, device=device))
    say("a torch.compile'd function ran")
if case == "libcuda-global":
    import ctypes
    ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    say("libcuda.so.1 loaded RTLD_GLOBAL")
if case == "runner":
    import tempfile, zipfile
    from pathlib import Path
    folder = Path(tempfile.mkdtemp())
    zipfile.ZipFile(path).extractall(folder)
    so = next(folder.rglob("*.so"))
    say(f"unzipped; loading {so.name}")
    if device == "cuda":
        runner = torch._C._aoti.AOTIModelContainerRunnerCuda(str(so), 1, device, str(so.parent))
    else:
        runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(so), 1)
    say("runner created")
    out = runner.run([torch.randn(3, 64, device=device)])
else:
    from torch._inductor.codecache import get_device_information
    say(f"device check: {get_device_information(device)}")
    m = torch._inductor.aoti_load_package(path, device_index=0 if case == "device-0" else -1)
    say("package loaded")
    out = [m(torch.randn(3, 64, device=device))]
torch.cuda.synchronize() if device == "cuda" else None
say(f"ran: output {tuple(out[0].shape)}")
"""

BACKTRACE_C = r"""
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>
static void on_fault(int sig) {
    void *frames[64];
    int n = backtrace(frames, 64);
    write(2, "native stack:\n", 14);
    backtrace_symbols_fd(frames, n, 2);
    signal(sig, SIG_DFL);
    raise(sig);
}
__attribute__((constructor)) static void install(void) {
    signal(SIGSEGV, on_fault);
    signal(SIGBUS, on_fault);
    signal(SIGABRT, on_fault);
}
"""


CASES = ("plain", "runner", "ld-debug", "inductor-first", "libcuda-global", "device-0")
CUDA_ONLY = ("libcuda-global", "device-0")


class Small(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)).to(dtype)
        self.dtype = dtype

    def forward(self, x):
        return self.net(x.to(self.dtype)).float()


class Report:
    def __init__(self, path: Path):
        self.file = path.open("w")

    def __call__(self, text: str) -> None:
        line = f"[{time.monotonic() - STARTED:5.0f} s] {text}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def descendants(pid: int) -> list[str]:
    """The command lines of every process below pid."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in table.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3:
            children.setdefault(int(fields[1]), []).append((int(fields[0]), fields[2]))
    found, todo = [], [pid]
    while todo:
        for child, args in children.get(todo.pop(), []):
            found.append(args[:160])
            todo.append(child)
    return found


def run_child(argv: list[str], env: dict | None, timeout_s: float) -> tuple[int, float, set[str], str]:
    """Runs a child, sampling the commands of its descendants (a compiler started by the loader shows here)."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env, text=True)
        seen: set[str] = set()
        while child.poll() is None and time.monotonic() - started < timeout_s:
            seen.update(args for args in descendants(child.pid) if not args.startswith(sys.executable))
            time.sleep(0.3)
        if child.poll() is None:
            child.kill()
        child.wait()
        output.seek(0)
        return child.returncode, time.monotonic() - started, seen, output.read()


def native_handler(workdir: Path) -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    source, library = workdir / "backtrace.c", workdir / "libbacktrace_on_fault.so"
    source.write_text(BACKTRACE_C)
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source)],
                          capture_output=True, text=True)
    return library if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=400,
                        help="start no new case after this many seconds; none runs more than 60 s past it")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/aoti-probe"))
    parser.add_argument("--cases", default=",".join(CASES), help="which, in this order (CUDA-only ones are "
                        "skipped on the CPU)")
    parser.add_argument("--as-torch-links", action="store_true", help="compile as PyTorch alone links: without "
                        "the shared libstdc++ that vitserve's export asks for where the compiler copies it in")
    args = parser.parse_args()
    report = Report(args.out)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    debugger = shutil.which("gdb") or shutil.which("cuda-gdb")
    report(f"torch {torch.__version__}, {sys.executable}, "
           f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, debugger: {debugger}")

    path = args.workdir / "small.pt2"
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    model = Small(dtype).to(args.device).eval()
    with torch.no_grad():
        program = torch.export.export(model, (torch.randn(8, 64, device=args.device),),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
        link = {} if args.as_torch_links else toolchain.inductor_configs()
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=link)
    kept = shutil.copy(path, args.out.with_name(f"{args.out.stem}-small.pt2"))  # for readelf/nm elsewhere
    report(f"compiled {path} ({path.stat().st_size / 1e6:.1f} MB), a copy at {kept}; compiler "
           f"{toolchain.compiler()} links libstdc++ statically: "
           f"{toolchain.links_libstdcxx_statically(toolchain.compiler())}, asked for the shared one: {bool(link)}")
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            report(f"  {info.filename} {info.file_size}")
        unpacked = args.workdir / "unpacked"
        archive.extractall(unpacked)
    for so in unpacked.rglob("*.so"):
        ldd = subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout
        report(f"ldd {so.name}:\n" + "\n".join("    " + line.strip() for line in ldd.splitlines()))

    handler = native_handler(args.workdir)

    def attempt(case: str, how: str) -> str:
        argv = [sys.executable, "-c", CHILD, str(path), args.device, case]
        env = dict(os.environ)
        if how == "under a debugger":
            argv = [debugger, "-batch", "-return-child-result", "-ex", "run", "-ex", "bt 40", "-ex", "info symbol $pc",
                    "-ex", "x/3i $pc", "--args", *argv]
        elif how == "with a native backtrace handler":
            env["LD_PRELOAD"] = str(handler)
        elif how == "with LD_DEBUG=libs":
            env["LD_DEBUG"] = "libs"
        left = args.budget_s + 60 - (time.monotonic() - STARTED)
        rc, seconds, commands, output = run_child(argv, env, timeout_s=min(180.0, left))
        lines = [line[:400] for line in output.splitlines()
                 if "FutureWarning" not in line and "return cls.__new__" not in line]
        if how == "under a debugger":  # the child's own lines, the signal, the frames and the instruction
            lines = [line for line in lines if line.startswith(("#", "[ ", "Program", "Traceback", "=>"))
                     or any(mark in line for mark in ("SIG", "Error", "ptrace", " in section "))]
        elif how == "with LD_DEBUG=libs":  # the child's own lines, and the libraries it initialised after torch's
            after = next((i for i, line in enumerate(lines) if " imported" in line), len(lines))  # import
            pid = next((line.split(":")[0].strip() for line in lines if "calling init:" in line), "")
            lines = [line for i, line in enumerate(lines) if line.startswith(("[", "Fatal", "  File")) or (
                i > after and "calling init:" in line and line.split(":")[0].strip() == pid)]
        report(f"{case} ({how}): exit {rc} after {seconds:.0f} s; processes below it: {sorted(commands) or 'none'}")
        report("\n".join("    " + line for line in lines[-70:]))
        outcomes[case] = "ran" if "] ran: output" in output else "failed"
        return output

    outcomes: dict[str, str] = {}  # case -> ran / failed / not run
    for case in args.cases.split(","):
        if case in CUDA_ONLY and args.device != "cuda":
            continue
        if time.monotonic() - STARTED > args.budget_s:
            report(f"{case}: not run (budget)")
            outcomes[case] = "not-run"
        elif case == "ld-debug":  # the child loads as in plain
            attempt(case, "with LD_DEBUG=libs")
        elif case != "plain":
            attempt(case, "plain")
        elif not debugger or " imported" not in attempt(case, "under a debugger"):  # none, or it could not run it
            attempt(case, "with a native backtrace handler" if handler else "plain")

    try:
        loaded = torch._inductor.aoti_load_package(str(path))
        out = loaded(torch.randn(3, 64, device=args.device))
        report(f"same-process: loaded and ran, output {tuple(out.shape)}")
        outcomes["same-process"] = "ran"
    except Exception as e:
        report(f"same-process: {type(e).__name__}: {e}")
        outcomes["same-process"] = "failed"
    report("summary: " + " ".join(f"{case}={outcome}" for case, outcome in outcomes.items()))


if __name__ == "__main__":
    main()
