"""Switches TensorFlow's oneDNN kernels on, unless the user chose.

TensorFlow turns them on by itself only on CPUs with AVX-512; on AVX2-only
CPUs (many AMD EPYCs) it runs its own Eigen kernels, and the language
model's training step is ~1.4x slower for it (benchmarks/RESULTS.md).
`TF_ENABLE_ONEDNN_OPTS` is read once, when TensorFlow loads, so this must
run before that: the commands import it first, and `import mylayers` (or
`models`) does in a notebook. Once TensorFlow is loaded the choice is made
and this does nothing, without a warning: the setting changes speed and
rounding, not results' meaning, and a warning could only be acted on by
restarting the kernel. `TF_ENABLE_ONEDNN_OPTS=0` keeps Eigen's kernels.
"""

import os
import sys

if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
