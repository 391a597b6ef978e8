"""Wheels trimmed to what the GPU machine loads, so a carried wheel set fits its size limit
(tools/prepare_gpu_wheels.sh): Unsloth's wheel without its Studio app, bitsandbytes with only its CPU and
CUDA 13.0 libraries (the GPU image's torch is built for CUDA 13.0).

    python -m tools.bench.wheels trim FOLDER     # trims, in place, the wheels of FOLDER that TRIMS names
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import tempfile
import zipfile
from pathlib import Path

# wheel name prefix -> the files (fnmatch patterns) dropped from it
TRIMS = {"unsloth-": ("studio/*", "unsloth_cli/*"),
         "bitsandbytes-": ("bitsandbytes/libbitsandbytes_cuda1[0-2]*.so", "bitsandbytes/libbitsandbytes_cuda13[1-9].so",
                           "bitsandbytes/libbitsandbytes_rocm*.so", "bitsandbytes/libbitsandbytes_xpu*.so")}


def trim_wheel(wheel: Path, patterns: tuple[str, ...]) -> list[str]:
    """Rewrite `wheel` without the files matching `patterns` and without their lines in its RECORD (pip then
    installs it as a whole wheel); atomic. Returns the names dropped."""
    with zipfile.ZipFile(wheel) as source:
        dropped = [i.filename for i in source.infolist() if any(fnmatch.fnmatch(i.filename, p) for p in patterns)]
        if not dropped:
            return []
        gone = set(dropped)
        handle, tmp = tempfile.mkstemp(dir=wheel.parent, suffix=".whl.tmp")
        os.close(handle)
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
                for info in source.infolist():
                    if info.filename in gone:
                        continue
                    data = source.read(info)
                    if info.filename.endswith(".dist-info/RECORD"):
                        lines = data.decode().splitlines(keepends=True)
                        data = "".join(line for line in lines if line.split(",", 1)[0] not in gone).encode()
                    target.writestr(info, data)
            os.chmod(tmp, wheel.stat().st_mode)
            os.replace(tmp, wheel)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return dropped


def trim_folder(folder: Path) -> dict[str, int]:
    """Trim every wheel of `folder` that TRIMS names; returns {wheel name: files dropped}."""
    return {wheel.name: len(trim_wheel(wheel, patterns)) for wheel in sorted(folder.glob("*.whl"))
            for prefix, patterns in TRIMS.items() if wheel.name.startswith(prefix)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.wheels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    folder = sub.add_parser("trim", help="trim the wheels of FOLDER that TRIMS names")
    folder.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    for name, count in trim_folder(args.folder).items():
        print(f"{name}: {count} files dropped")


if __name__ == "__main__":
    main()
