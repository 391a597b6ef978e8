"""The environment of a trainer run on the CPU (tools.trainers.trainer_env)."""
import subprocess
import sys

from tools.trainers import CPU_ALLOCATOR_ENV, trainer_env

# Page faults of ten 64 MiB buffers allocated and freed after a first one: a fresh mapping each time faults in
# all 16,384 pages again; the heap serves the later ones from the memory the first one left.
REUSE = """
import resource
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = bytearray(64 << 20); del buffer
start = faults()
for _ in range(10):
    buffer = bytearray(64 << 20); del buffer
print(faults() - start)
"""


def page_faults(env: dict) -> int:
    return int(subprocess.run([sys.executable, "-c", REUSE], env=env, capture_output=True, text=True,
                              check=True).stdout)


def test_a_trainer_run_reuses_freed_large_buffers_instead_of_faulting_them_in_again(monkeypatch):
    for name in CPU_ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    bare = {k: v for k, v in trainer_env("llamafactory").items() if k not in CPU_ALLOCATOR_ENV}
    assert page_faults(bare) > 10 * 16_000
    assert page_faults(trainer_env("llamafactory")) < 1_000
    assert page_faults(trainer_env("swift")) < 1_000


def test_the_callers_own_allocator_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    env = trainer_env("swift", MALLOC_TRIM_THRESHOLD_="0")
    assert env["MALLOC_MMAP_MAX_"] == "65536"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "0"
