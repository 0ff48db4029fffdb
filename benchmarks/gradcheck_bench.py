"""Speed of `mylayers.gradcheck` on the two sizes issue #12 sets targets for.

Run: `python benchmarks/gradcheck_bench.py`. Prints a table, then the same
figures as JSON. Each figure is the median wall time of a few complete
`gradcheck` calls on a built layer (the first call, which also traces and
builds, is timed apart as "cold").

- full Jacobian: a 64 -> 64 `mylayers.Linear` (4,160 weights), batch 4, in
  float64, eager + `tf.function` + XLA (target: < 5 s), and the same layer
  checked as it is, in float32 (`dtype=None`);
- projection: `jacobian="projection"` on a 1024 -> 1024 `mylayers.Linear`
  (1,049,600 weights), batch 8, float64, the three modes (target: < 30 s).
"""

import json

import harness  # sets KERAS_BACKEND before Keras loads
import numpy as np  # noqa: E402

import mylayers  # noqa: E402

RUNS = 3


def _timed(layer, x, **kwargs):
    """Seconds of a cold call, then the median of `RUNS` warm ones."""
    cold, warm, report = harness.first_and_median(
        lambda: mylayers.gradcheck(layer, x, **kwargs), RUNS
    )
    assert report.ok, report
    return cold, warm


def _result(name, weights, cold, warm, limit):
    return {
        "name": name,
        "weights": weights,
        "cold_s": cold,
        "median_s": warm,
        "target": f"< {limit} s" if limit else "",
        "passed": warm < limit if limit else None,
    }


def bench_full():
    layer = mylayers.Linear(64)
    x = np.random.default_rng(2).normal(size=(4, 64))
    layer(x.astype("float32"))
    weights = layer.count_params()
    results = []
    for dtype, limit in (("float64", 5), (None, None)):
        cold, warm = _timed(layer, x, dtype=dtype)
        results.append(
            _result(
                f"full Jacobian, Linear 64->64, {dtype or 'float32'}, 3 modes",
                weights,
                cold,
                warm,
                limit,
            )
        )
    return results


def bench_projection():
    layer = mylayers.Linear(1024)
    x = np.random.default_rng(3).normal(size=(8, 1024))
    layer(x.astype("float32"))
    cold, warm = _timed(layer, x, jacobian="projection")
    return [
        _result(
            "projection, Linear 1024->1024, float64, 3 modes",
            layer.count_params(),
            cold,
            warm,
            30,
        )
    ]


def main():
    results = bench_full() + bench_projection()
    print(f"{'benchmark':52} {'weights':>9} {'cold s':>7} {'median s':>9}")
    for r in results:
        verdict = (
            "" if r["passed"] is None else ("met" if r["passed"] else "MISSED")
        )
        print(
            f"{r['name']:52} {r['weights']:9,d} {r['cold_s']:7.2f} "
            f"{r['median_s']:9.2f}  {r['target']} {verdict}"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
