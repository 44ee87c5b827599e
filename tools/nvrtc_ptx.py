#!/usr/bin/env python3
"""Compile CUDA C kernels to PTX with NVRTC, driven through ctypes.

Used by tools/build-ptx.sh. NVRTC comes from the pinned PyPI wheel
nvidia-cuda-nvrtc-cu12 (no CUDA toolkit, no GPU). The kernels include only
the headers beside them (kernels/*.cuh), which are handed to NVRTC by name,
so the output depends on nothing but the sources, these options and the
NVRTC version: rebuilding reproduces the committed PTX byte for byte.

usage: nvrtc_ptx.py --lib LIBNVRTC --out DIR file.cu...
"""

import argparse
import ctypes
import pathlib
import sys

# compute_80: the PTX loads on Ampere and newer (the driver JIT-compiles it
# for the actual GPU, e.g. sm_90 on H100/H200). No fast-math: results must
# match the CPU reference within 1e-4.
OPTIONS = [b"--gpu-architecture=compute_80", b"--std=c++17"]


def check(lib, status, what, prog=None):
    if status == 0:
        return
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    msg = lib.nvrtcGetErrorString(status).decode()
    log = ""
    if prog is not None:
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
    sys.exit(f"nvrtc: {what}: {msg}\n{log}")


def compile_one(lib, src: pathlib.Path, headers):
    prog = ctypes.c_void_p()
    names = [h.name.encode() for h in headers]
    texts = [h.read_bytes() for h in headers]
    n = len(headers)
    check(
        lib,
        lib.nvrtcCreateProgram(
            ctypes.byref(prog),
            src.read_bytes(),
            src.name.encode(),
            n,
            (ctypes.c_char_p * n)(*texts),
            (ctypes.c_char_p * n)(*names),
        ),
        f"create {src.name}",
    )
    opts = (ctypes.c_char_p * len(OPTIONS))(*OPTIONS)
    check(lib, lib.nvrtcCompileProgram(prog, len(OPTIONS), opts), f"compile {src.name}", prog)
    size = ctypes.c_size_t()
    check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "ptx size", prog)
    buf = ctypes.create_string_buffer(size.value)
    check(lib, lib.nvrtcGetPTX(prog, buf), "get ptx", prog)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.value


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", required=True, help="path to libnvrtc.so.12")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("sources", nargs="+", type=pathlib.Path)
    a = ap.parse_args()
    lib_path = pathlib.Path(a.lib)
    # libnvrtc loads its builtins library by name; load it first from the
    # same folder so no LD_LIBRARY_PATH is needed.
    for b in sorted(lib_path.parent.glob("libnvrtc-builtins.so*")):
        ctypes.CDLL(str(b), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(lib_path))
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    a.out.mkdir(parents=True, exist_ok=True)
    for src in a.sources:
        headers = sorted(src.parent.glob("*.cuh"))
        ptx = compile_one(lib, src, headers)
        (a.out / (src.stem + ".ptx")).write_bytes(ptx)
    print(f"nvrtc {major.value}.{minor.value}: {len(a.sources)} files -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
