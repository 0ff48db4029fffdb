"""Shared test set-up."""

import os

# Keras 3 picks its backend when first imported; these tests are TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Quiet TensorFlow's C++ start-up notes in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
