"""read + validate of the first 20k generated lines, privacy on or off (argv[1])."""
import asyncio, sys, glob
from pathlib import Path
from benchmarks.privacy import _load
files = sorted(Path("/tmp/pf2").glob("interactions-*.jsonl.gz"))[:4]
print(asyncio.run(_load(files, sys.argv[1] == "on"))[:2])
