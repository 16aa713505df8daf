"""Generate and cache training samples: python training/build_cache.py START STOP"""
import sys
import time

import data

if __name__ == "__main__":
    start, stop = int(sys.argv[1]), int(sys.argv[2])
    t = time.time()
    paths = data.build_cache(range(start, stop), processes=2)
    print(f"{len(paths)} samples in {time.time() - t:.0f} s", flush=True)
