"""Writes `moons.csv`: two interleaving half-moons, 400 points with noise.

  python examples/my_project/make_data.py

Two numeric feature columns (`x`, `y`, on scales far from 0 and 1 on
purpose: the model's Normalization layer takes care of that) and a string
label column (`upper` or `lower`). Seeded, so the file is the same on
every machine; the committed `moons.csv` is its output.
"""

import csv
import os

import numpy as np

ROWS = 400


def moons(rows, seed=0):
    rng = np.random.default_rng(seed)
    half = rows // 2
    angle = rng.uniform(0, np.pi, size=rows)
    upper = np.arange(rows) < half
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x, y], axis=1) + rng.normal(0, 0.15, size=(rows, 2))
    points = points * [40.0, 3.0] + [100.0, -7.0]
    order = rng.permutation(rows)
    return points[order], np.where(upper, "upper", "lower")[order]


def main():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moons.csv")
    points, labels = moons(ROWS)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "label"])
        for (x, y), label in zip(points, labels):
            writer.writerow([f"{x:.3f}", f"{y:.4f}", label])
    print(f"wrote {ROWS} rows to {path}")


if __name__ == "__main__":
    main()
