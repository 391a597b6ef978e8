"""Wheels trimmed for the GPU machine's carry limit keep what is loaded there and a RECORD that matches."""

import zipfile

from tools.bench.wheels import TRIMS, trim_folder, trim_wheel


def make_wheel(path, names):
    record = "".join(f"{name},sha256=x,1\n" for name in names) + "pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name in names:
            wheel.writestr(name, b"x")
        wheel.writestr("pkg-1.0.dist-info/RECORD", record)
    return path


def test_trim_drops_the_files_and_their_record_lines(tmp_path):
    libs = [f"bitsandbytes/libbitsandbytes_{v}.so" for v in ("cpu", "cuda118", "cuda128", "cuda130", "cuda132",
                                                             "rocm64", "xpu2026")]
    wheel = make_wheel(tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl",
                       ["bitsandbytes/__init__.py", *libs])
    dropped = trim_wheel(wheel, TRIMS["bitsandbytes-"])
    assert sorted(dropped) == sorted(set(libs) - {"bitsandbytes/libbitsandbytes_cpu.so",
                                                  "bitsandbytes/libbitsandbytes_cuda130.so"})
    with zipfile.ZipFile(wheel) as trimmed:
        kept = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
                "bitsandbytes/libbitsandbytes_cuda130.so"]
        assert trimmed.namelist() == [*kept, "pkg-1.0.dist-info/RECORD"]
        assert [line.split(",")[0] for line in trimmed.read("pkg-1.0.dist-info/RECORD").decode().splitlines()] == [
            *kept, "pkg-1.0.dist-info/RECORD"]
    assert trim_wheel(wheel, TRIMS["bitsandbytes-"]) == []  # already trimmed


def test_trim_folder_trims_only_the_named_wheels(tmp_path):
    make_wheel(tmp_path / "unsloth-2026.10.9-py3-none-any.whl",
               ["unsloth/__init__.py", "studio/app.js", "studio/icons/icon.png", "unsloth_cli/main.py"])
    make_wheel(tmp_path / "trl-1.15.0-py3-none-any.whl", ["trl/__init__.py", "studio/x.py"])
    assert trim_folder(tmp_path) == {"unsloth-2026.10.9-py3-none-any.whl": 3}
    with zipfile.ZipFile(tmp_path / "trl-1.15.0-py3-none-any.whl") as untouched:
        assert "studio/x.py" in untouched.namelist()
