"""A character-level Transformer LM on the bundled Python docs, offline.

Four pre-norm blocks of `mylayers` layers (rotary attention, RMSNorm, GELU
MLP) read 128 characters and predict the next at each; trained by the same
trainer and `CustomModel.train_step` as the digits models. Every field but
the data's, the model's and the optimizer's comes from
`configs/default.py`.

Launch:
  python train.py --config configs/lm.py --workdir runs/lm
Then sample from it:
  python -m template_trainer.sample --workdir runs/lm --prompt "The list"

Override any field on the command line, e.g.
  --config.model.num_layers=2 --config.num_epochs=2
"""

import ml_collections

from configs import default


def get_config():
    config = default.get_config()

    # data
    config.dataset = "python_docs"  # bundled with the repository
    config.context_length = 128
    # 32 windows of 128 characters: 4,096 characters a step.
    config.batch_size = 32
    config.eval_batch_size = 256
    config.max_shift = 0  # images only

    # model
    config.model = ml_collections.ConfigDict()
    config.model.name = "transformer_lm"
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.width = 128
    config.model.hidden_units = 512  # GPT's 4x the width
    # rotary: relative positions, no length limit | learned
    config.model.positions = "rotary"
    # No overfitting to curb: in its five epochs the model sees each
    # training character about 5 times and its validation loss still falls.
    config.model.dropout = 0.0
    # Recompute each block's activations in the backward pass: 81% less
    # peak memory for 31% more step time at 8 layers and context 256, not
    # under XLA (benchmarks/RESULTS.md).
    config.model.gradient_checkpointing = False
    # plain | tiled: the same function in tiles of 128 positions with a
    # recomputing custom gradient (mylayers.TiledCausalSelfAttention):
    # memory linear in the context, for long ones; at 128 one tile, so
    # plain is as good and not slower. From context 512 on, tiled with
    # config.jit_compile=True is the fastest step: 0.81-1.08x PyTorch
    # eager's at 512-1024 (plain: 1.00-1.31x; benchmarks/RESULTS.md).
    config.model.attention = "plain"

    # optimizer
    config.optimizer = "adamw"
    config.learning_rate = 2e-3
    config.weight_decay = 0.01
    config.warmup_steps = 100
    # Transformers' usual guard against the odd huge gradient early on.
    config.global_clipnorm = 1.0
    # 323 steps of 32 windows an epoch (the training split's 1.32 M
    # characters once, on average). Five: under 10 minutes on 2 CPU cores
    # (benchmarks/RESULTS.md).
    config.num_epochs = 5

    # training loop
    config.val_every_epochs = 1
    config.best_metric = "val_bpc"

    return config
