"""Shared parts of the `lm_*` benchmarks (not a benchmark itself).

The default character LM of `configs/lm.py` (4 blocks, 4 heads, width
128, MLP 512, context 128, batch 32, vocabulary 97, rotary positions,
float32), a batch of real training text for it, our step driven by the
trainer's loop, and an optional PyTorch twin of the same architecture.
"""

import harness  # sets KERAS_BACKEND before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from template_trainer import setup  # noqa: E402
from template_trainer.data.python_docs.builder import (  # noqa: E402
    BLOCK_LENGTH,
    VOCABULARY_SIZE,
    encode,
    read_corpus,
    split_of_block,
)

DEFAULT = {
    "num_layers": 4,
    "num_heads": 4,
    "width": 128,
    "hidden_units": 512,
    "context": 128,
    "batch": 32,
}
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01  # given to both frameworks (their defaults differ)
EPSILON = 1e-7  # Keras's Adam epsilon, given to PyTorch's too


def text_batch(batch, context, seed=0):
    """`(x, y)` int32 numpy arrays: `batch` windows of training text, `y`
    the next character of each position (no padding anywhere)."""
    text = read_corpus()
    train = "".join(
        text[start : start + BLOCK_LENGTH]
        for index, start in enumerate(range(0, len(text), BLOCK_LENGTH))
        if split_of_block(index) == "train"
    )
    ids = encode(train)
    starts = np.random.default_rng(seed).integers(
        0, len(ids) - context - 1, batch
    )
    windows = np.stack([ids[s : s + context + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]


def build_ours(
    config=DEFAULT, metrics=(), gradient_checkpointing=False, seed=0, **kw
):
    """Our `TransformerLM`, compiled as the trainer compiles it (AdamW,
    sparse cross-entropy from logits), optimizer slots built."""
    keras.utils.set_random_seed(seed)
    model = models.TransformerLM(
        input_shape=(config["context"],),
        num_classes=VOCABULARY_SIZE,
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        width=config["width"],
        hidden_units=config["hidden_units"],
        positions="rotary",
        dropout=0.0,
        gradient_checkpointing=gradient_checkpointing,
        **kw,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            LEARNING_RATE, weight_decay=WEIGHT_DECAY, epsilon=EPSILON
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[metric() for metric in metrics],
    )
    model.optimizer.build(model.trainable_variables)
    return model


def trainer_metrics():
    """What the trainer compiles a text model with (accuracy, bpc)."""
    return (
        lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        lambda: models.BitsPerCharacter(name="bpc"),
    )


def ours_runner(model, x, y, steps, jit_compile=False):
    """`run()` -> `harness.Clock.per_step` of `steps` steps in one call of the
    trainer's `make_train_steps` loop (traced and warmed up here)."""
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    iterator = iter(data)
    step = tf.Variable(0, dtype=tf.int64)
    train_steps = setup.make_train_steps(
        model, tf.distribute.get_strategy(), step, jit_compile
    )
    count = tf.constant(steps, tf.int64)

    def run():
        clock = harness.Clock()
        logs = train_steps(iterator, count)
        float(logs["loss"])
        return clock.per_step(steps)

    run()  # trace
    run()  # warm up
    return run


def fit_runner(model, x, y, steps):
    """`run()` -> `harness.Clock.per_step` of `model.fit` (its defaults:
    `steps_per_execution=1`, `jit_compile="auto"`)."""
    data = tf.data.Dataset.from_tensors((x, y)).repeat()

    def run():
        timer = harness.step_timer(2)
        model.fit(
            data,
            steps_per_epoch=steps + 2,
            epochs=1,
            verbose=0,
            shuffle=False,  # a tf.data input: nothing to shuffle
            callbacks=[timer],
        )
        return timer.per_step()

    run()
    return run


def count_params(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


# --- PyTorch twin -----------------------------------------------------------


def import_torch():
    """torch, or None if it is not installed (an optional extra)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_lm(torch, config=DEFAULT, vocabulary=VOCABULARY_SIZE):
    """Our `TransformerLM` in PyTorch, layer for layer.

    Same parameters (an untied embedding and logits layer, biases on every
    projection, RMSNorm scales only, epsilon 1e-6), rotary positions in the
    same half-split layout and base, exact (erf) GELU, and
    `scaled_dot_product_attention(is_causal=True)` for attention.
    """
    nn, F = torch.nn, torch.nn.functional
    heads, width = config["num_heads"], config["width"]
    depth = width // heads

    def rotate(x, cos, sin):  # x: (batch, length, heads, depth)
        first, second = x.chunk(2, dim=-1)
        return torch.cat(
            [first * cos - second * sin, first * sin + second * cos], dim=-1
        )

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(width, 3 * width)
            self.out = nn.Linear(width, width)

        def forward(self, x, cos, sin):
            batch, length, _ = x.shape
            qkv = self.qkv(x).view(batch, length, 3, heads, depth)
            q, k, v = qkv.unbind(2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                is_causal=True,
            )
            return self.out(o.transpose(1, 2).reshape(batch, length, width))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.RMSNorm(width, eps=1e-6)
            self.attention = Attention()
            self.mlp_norm = nn.RMSNorm(width, eps=1e-6)
            self.hidden = nn.Linear(width, config["hidden_units"])
            self.mlp_out = nn.Linear(config["hidden_units"], width)

        def forward(self, x, cos, sin):
            x = x + self.attention(self.norm(x), cos, sin)
            return x + self.mlp_out(F.gelu(self.hidden(self.mlp_norm(x))))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocabulary, width)
            nn.init.normal_(self.embedding.weight, std=0.02)
            self.blocks = nn.ModuleList(
                Block() for _ in range(config["num_layers"])
            )
            self.final_norm = nn.RMSNorm(width, eps=1e-6)
            self.logits = nn.Linear(width, vocabulary)
            inverse = 10_000.0 ** (-torch.arange(0, depth, 2) / depth)
            angles = torch.arange(config["context"])[:, None] * inverse
            # (length, 1, depth / 2): broadcasts over batch and heads.
            self.register_buffer("cos", angles.cos()[:, None], False)
            self.register_buffer("sin", angles.sin()[:, None], False)

        def forward(self, ids):
            length = ids.shape[1]
            cos, sin = self.cos[:length], self.sin[:length]
            x = self.embedding(ids)
            for block in self.blocks:
                x = block(x, cos, sin)
            return self.logits(self.final_norm(x))

    return LM()


def copy_weights(torch, keras_model, torch_model):
    """Loads our model's weights into the PyTorch twin (same layouts:
    kernels stored (out, in) in both)."""

    def put(parameter, variable):
        with torch.no_grad():
            parameter.copy_(torch.from_numpy(np.asarray(variable)))

    layer = keras_model.get_layer
    put(torch_model.embedding.weight, layer("embedding").embeddings)
    for i, block in enumerate(torch_model.blocks):
        ours = layer(f"block_{i}")
        put(block.norm.weight, ours.norm.scale)
        put(block.attention.qkv.weight, ours.attention.qkv_kernel)
        put(block.attention.qkv.bias, ours.attention.qkv_bias)
        put(block.attention.out.weight, ours.attention.output_kernel)
        put(block.attention.out.bias, ours.attention.output_bias)
        put(block.mlp_norm.weight, ours.mlp.norm.scale)
        put(block.hidden.weight, ours.mlp.hidden.kernel)
        put(block.hidden.bias, ours.mlp.hidden.bias)
        put(block.mlp_out.weight, ours.mlp.out.kernel)
        put(block.mlp_out.bias, ours.mlp.out.bias)
    put(torch_model.final_norm.weight, layer("final_norm").scale)
    put(torch_model.logits.weight, layer("logits").kernel)
    put(torch_model.logits.bias, layer("logits").bias)


def torch_runner(torch, model, x, y, steps, compile_model=False):
    """`run()` -> `harness.Clock.per_step` of an eager (or `torch.compile`d)
    PyTorch training step: forward, cross-entropy, backward, AdamW."""
    F = torch.nn.functional
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        eps=EPSILON,
    )
    x, y = torch.from_numpy(x).long(), torch.from_numpy(y).long()

    def compute_loss(x, y):
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.ravel())

    if compile_model:  # the forward pass and the loss, and so the backward
        compute_loss = torch.compile(compute_loss)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(x, y)
        loss.backward()
        optimizer.step()
        return loss

    def run():
        clock = harness.Clock()
        for _ in range(steps):
            loss = step()
        float(loss.detach())
        return clock.per_step(steps)

    run()  # compile, warm up
    run()
    return run
