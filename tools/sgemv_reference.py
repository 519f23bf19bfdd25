"""The memory-bandwidth yardstick for `fedretail bench aggregate`: numpy's sgemv over the
same 100 updates x 1,000,000 f32, as JSON. Needs numpy (`pip install numpy`)."""
import numpy as np, time, json
U, D = 100, 1_000_000
a = np.random.default_rng(1).random((U, D), dtype=np.float32) - 0.5
w = np.arange(1, U + 1, dtype=np.float32)
ts = []
for _ in range(5):
    t = time.perf_counter(); s = w @ a; ts.append(time.perf_counter() - t)
ts.sort(); m = ts[len(ts)//2]
print(json.dumps({"numpy_sgemv_median_seconds": m, "gb_per_s": U*D*4/m/1e9}))
