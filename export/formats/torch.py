"""`--format torch`: an AOTInductor package (model.pt2) for one device and precision (export/torch_package.py),
served by the `torch` runtime. It is verified by that runtime in a fresh Python process, as the server will run it:
not in the process that compiled it, and a crash of PyTorch's runtime becomes an export error with the crash's
stack. Where PyTorch's package loader fails or crashes before the package is loaded, the package is verified once
more through AOTInductor's container runner (plain calls); the manifest records which loader passed
(`package.loader`), and the server loads it the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from vitserve.errors import ExportError
from vitserve.export.formats import Built, Flags, Format

log = logging.getLogger(__name__)

PACKAGE_NAME = "model.pt2"
CHILD = "PyTorch running the package"
RUNNER_CHILD = "AOTInductor's container runner running the package"


class TorchFormat(Format):
    name = "torch"
    # torch.export keeps scaled_dot_product_attention whole, and AOTInductor compiles it into one fused attention
    # kernel, where the explicit form writes the whole attention matrix to memory and reads it back
    explicit_attention = False
    takes = ("device", "batch_buckets", "max_autotune", "no_cuda_graphs")

    def format_options(self, flags: Flags) -> dict[str, Any]:
        from vitserve.export.torch_package import TorchOptions

        device = flags.device or "cuda"
        return {"torch_options": TorchOptions(
            device=device, dtype=flags.dtype or ("fp16" if device == "cuda" else "fp32"),
            batch_buckets=tuple(flags.batch_buckets), max_autotune=flags.max_autotune,
            cuda_graphs=not flags.no_cuda_graphs)}

    def check(self, options) -> tuple[int, ...]:
        from vitserve.export.torch_package import TorchOptions, check_options

        super().check(options)
        return check_options(options.torch_options or TorchOptions(), options.max_batch)

    def build(self, job) -> Built:
        from vitserve.export.torch_package import TorchOptions, compile_package

        torch_options = job.options.torch_options or TorchOptions()
        job.progress(f"compiling an AOTInductor package ({torch_options.device}, {torch_options.dtype}, batch "
                     f"1..{job.options.max_batch}, buckets {', '.join(map(str, job.buckets))}); this takes a minute "
                     "or more")
        package = compile_package(job.deploy, job.preprocess.input_size, job.folder / PACKAGE_NAME, torch_options,
                                  job.options.max_batch)
        package["batch_buckets"] = list(job.buckets)
        package["loader"] = "package"
        if package["fp8_linear_layers"]:
            job.progress(f"  {package['fp8_linear_layers']} Linear layers in fp8"
                         + ("; on the CPU PyTorch emulates fp8, slower than bf16: this package shows fp8's accuracy, "
                            "not its speed" if torch_options.device == "cpu" else ""))
        job.progress(f"  {package['compile_seconds']:.0f}s; verifying against the fp32 PyTorch model")
        return Built(PACKAGE_NAME, "torch", dtype=torch_options.dtype, what=f"{torch_options.dtype} package",
                     graph={"file_bytes": (job.folder / PACKAGE_NAME).stat().st_size}, package=package, opset=False,
                     device="auto")

    def verify(self, job, result: Built) -> dict[str, Any]:
        """Verified in a child process; if PyTorch's package loader fails or crashes before the package is loaded,
        a second child loads it with the container runner (and the manifest then says so)."""
        from vitserve.export.verify import LOADED, ChildFailed

        try:
            report = job.verify(result, child=CHILD)
            report["loader"] = "package"
        except ChildFailed as failed:
            if LOADED in failed.output:  # it loaded: what failed was not the loader
                raise
            log.warning("%s; trying AOTInductor's container runner instead of PyTorch's package loader",
                        failed.summary)
            result.package.update(loader="runner", cuda_graphs=False)
            try:
                report = job.verify(result, child=RUNNER_CHILD)
            except ChildFailed as second:
                raise ExportError(f"{failed}\n\nLoaded by AOTInductor's container runner instead: {second}") \
                    from second
            report.update(loader="runner", package_loader_failure=failed.summary)
            job.progress(f"  PyTorch's package loader failed ({failed.summary}); verified and served through "
                         "AOTInductor's container runner, plain calls")
        job.progress(f"  max |diff| {report['max_abs_diff']:.2e}, min cosine {report['min_cosine']:.6f}, "
                     f"top-1 agreement {report['top1_agreement']:.0%}")
        return report


FORMAT = TorchFormat()
