"""The trainer's data: every source `config.dataset` names, as `tf.data`
pipelines in three splits (train, validation, test).

- `names`: which datasets and sources exist, checked without TensorFlow.
- `pipeline`: `create_datasets`, the split and batching shared by all.
- `catalog`: the bundled and TFDS catalog datasets (`digits`, `mnist`...).
- `tabular`: `csv:PATH`, numeric feature columns and a label column.
- `image_folder`: `imagefolder:DIR`, images in one folder per label.
- `text`: `python_docs` and `text:PATH`, windows of characters.
- `splits`: the validation and test splits a source without them gives up.
- `store`: a source converted once, cached under `data_dir` by content.
- `vocabulary`: the characters of a text source, as ids.
- `problems`: `DataError`, bad data in one line.
- `digits/`, `python_docs/`: the bundled datasets, as TFDS builders named
  `digits` and `python_docs`, with their files and attribution.

This package imports nothing heavy itself: `names` and `vocabulary` load
without TensorFlow, so a config is checked before TensorFlow starts.
"""
