"""Generate and cache training samples: python training/build_cache.py START STOP [PROCESSES] [--hard LO HI]

``--hard LO HI`` adds, for each seed LO..HI-1, one sample of each of data.HARD_VARIANTS.
"""
import os
import sys
import time

import data

if __name__ == "__main__":
    argv = sys.argv[1:]
    hard_seeds = data.take_option(argv, "--hard", 2)
    hard = range(*hard_seeds) if hard_seeds else None
    start, stop = int(argv[0]), int(argv[1])
    t = time.time()
    procs = int(argv[2]) if len(argv) > 2 else min(2, os.cpu_count() or 1)
    paths = data.build_cache(range(start, stop), processes=procs, hard=hard)
    print(f"{len(paths)} samples in {time.time() - t:.0f} s", flush=True)
