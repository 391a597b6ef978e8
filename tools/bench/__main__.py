"""python -m tools.bench run|worker|report (tools/bench/orchestrator.py)."""
from tools.bench.orchestrator import main

main()
