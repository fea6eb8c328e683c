"""The C++ toolchain AOTInductor compiles a package's shared object with, and how that object links libstdc++.

A package's shared object is loaded into a process that already has libstdc++ (PyTorch needs it). Where the
toolchain links libstdc++ into shared objects statically (a compiler whose own `libstdc++.so` is missing or a
dangling link, or one configured with -static-libstdc++), the object carries a private copy of libstdc++ whose
symbols it also exports; at load time some of its references bind to the process's libstdc++ and some to its own
copy, so the two disagree about the C++ locale's facets: `std::regex`, which the AOTInductor runtime uses to parse
the device name while loading, then fails with std::bad_cast or jumps into the wrong function (a segmentation
fault inside `std::regex_traits::transform_primary`, the loader's crash on a CUDA machine whose compiler does this).

`inductor_configs()` checks the toolchain once by compiling a small shared object with the same compiler and
reading which libraries it needs; where libstdc++ is not among them, it asks AOTInductor to link the shared
libstdc++ explicitly (`-l:libstdc++.so.6` on the linker line, ahead of the static archive), so the object uses the
process's libstdc++ like every other library in it. `needed_libraries()` reads an ELF object's DT_NEEDED entries
(no binutils needed) and lets the export check that the package's object came out that way.
"""

from __future__ import annotations

import functools
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from vitserve.errors import ExportError

LIBSTDCXX = "libstdc++.so.6"
# A function that uses the C++ locale, as the AOTInductor runtime's std::regex does: the linker pulls libstdc++ in.
PROBE_SOURCE = """
#include <locale>
extern "C" int vitserve_probe(char c) {
    return std::use_facet<std::ctype<char>>(std::locale()).is(std::ctype_base::digit, c);
}
"""


def needed_libraries(data: bytes) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared object (its bytes), in order."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF object")
    section_offset, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size) for i in range(count)]
    for _, kind, _, _, offset, size, link, _, _, _ in sections:
        if kind != 6:  # SHT_DYNAMIC; its sh_link is the string table its names are in
            continue
        strings = sections[link][4]
        names = []
        for tag, value in struct.iter_unpack("<qQ", data[offset:offset + size]):
            if tag == 0:  # DT_NULL ends the table
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strings + value)
                names.append(data[strings + value:end].decode())
        return names
    return []


def compiler() -> str:
    """The C++ compiler AOTInductor uses here ($CXX, else g++)."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    return get_cpp_compiler()


@functools.cache
def links_libstdcxx_statically(cxx: str) -> bool:
    """Whether `cxx` leaves libstdc++ out of a shared object's needed libraries (so it copied libstdc++ in)."""
    if not sys.platform.startswith("linux"):
        return False
    with tempfile.TemporaryDirectory(prefix="vitserve-cxx-") as folder:
        source, shared = Path(folder) / "probe.cpp", Path(folder) / "probe.so"
        source.write_text(PROBE_SOURCE)
        result = subprocess.run([cxx, "-shared", "-fPIC", str(source), "-o", str(shared)],
                                capture_output=True, text=True)
        if result.returncode:
            raise ExportError(f"the C++ compiler AOTInductor uses ({cxx}; $CXX chooses it) could not build a "
                              f"small shared object:\n{result.stderr.strip()}")
        return LIBSTDCXX not in needed_libraries(shared.read_bytes())


def inductor_configs() -> dict[str, object]:
    """AOTInductor settings that make the package's shared object need the shared libstdc++ (none if it does)."""
    if not links_libstdcxx_statically(compiler()):
        return {}
    from torch._inductor import config

    return {"aot_inductor.custom_op_libs": [*(config.aot_inductor.custom_op_libs or []), f":{LIBSTDCXX}"]}
