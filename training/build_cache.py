"""Generate and cache training samples: python training/build_cache.py START STOP [PROCESSES]"""
import os
import sys
import time

import data

if __name__ == "__main__":
    start, stop = int(sys.argv[1]), int(sys.argv[2])
    t = time.time()
    procs = int(sys.argv[3]) if len(sys.argv) > 3 else min(2, os.cpu_count() or 1)
    paths = data.build_cache(range(start, stop), processes=procs)
    print(f"{len(paths)} samples in {time.time() - t:.0f} s", flush=True)
