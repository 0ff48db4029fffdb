"""The whole LM job, raced: `train.py --config configs/lm.py` against a
PyTorch twin of the same job, for the same wall time on the same cores.

  /work/benchvenv/bin/python benchmarks/lm_race.py [--epochs=5]
  /work/benchvenv/bin/python benchmarks/lm_race.py --epochs=1  # shorter

1. Ours, as a user runs it: `python train.py --config configs/lm.py
   --workdir DIR --config.num_epochs=E`, timed from launch to exit (start-
   up, tracing, checkpoints, a validation each epoch, the test split and
   the exports all count). Its budget `T` is that wall time.
2. The twin, in a process of its own, launched the same way, with `T` to
   spend from its launch. The same job: `template_trainer.setup.create_run`
   builds the run of the same config (seed, data, initial weights) and the
   twin (`lm_common.torch_lm`) takes its initial weights and draws its
   batches from the run's own iterator, so both see the same windows in
   the same order; AdamW with the config's learning rate, weight decay
   and Keras's epsilon; the same warm-up + cosine schedule over the same
   total steps; gradients clipped to the config's global norm; bits per
   character on the validation split after every epoch, padding masked,
   as `models.BitsPerCharacter` counts them. It stops when `T` would run
   out before its next step and validation end (it skips the test split
   and the exports, which ours pays for).

Reports validation bits per character of each at the end (the race) and
at each epoch both reached (equal steps).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(epochs):
    sys.path.insert(0, REPO)
    from configs import lm

    config = lm.get_config()
    config.num_epochs = epochs
    return config


def _lr(config, step, total):
    """Keras's `CosineDecay` with linear warm-up, as
    `template_trainer.optimizers.create_schedule` builds it."""
    peak, warmup = config.learning_rate, config.warmup_steps
    if step < warmup:
        return peak * step / warmup
    done = min(step - warmup, total - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * done))


def twin(epochs, launched, budget):
    import lm_common as common  # TensorFlow, for the run's data
    import tensorflow as tf

    from template_trainer import setup

    torch = common.import_torch()
    torch.set_num_threads(2)
    F = torch.nn.functional
    config = _config(epochs)
    run = setup.create_run(config, None, tf.distribute.get_strategy())
    val = run.val_data  # the trainer's own validation batches
    val = [(x.numpy(), y.numpy()) for x, y in val]
    shape = {
        "num_layers": config.model.num_layers,
        "num_heads": config.model.num_heads,
        "width": config.model.width,
        "hidden_units": config.model.hidden_units,
        "context": config.context_length,
    }
    model = common.torch_lm(torch, shape)
    common.copy_weights(torch, run.model, model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        eps=1e-7,
    )
    total, per_epoch = run.total_steps, run.steps_per_epoch

    def validate():
        bits, count = 0.0, 0
        model.eval()
        with torch.inference_mode():
            for x, y in val:
                logits = model(torch.from_numpy(x).long())
                nats = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    torch.from_numpy(y).long().ravel(),
                    reduction="none",
                )
                keep = torch.from_numpy(x != 0).ravel()
                bits += float(nats[keep].sum()) / math.log(2)
                count += int(keep.sum())
        model.train()
        return bits / count

    records, step, step_s, val_s = [], 0, None, None
    while step < total:
        left = budget - (time.time() - launched)
        ends_epoch = (step + 1) % per_epoch == 0
        need = (step_s or 0) + (val_s or 0 if ends_epoch else 0)
        if step_s is not None and left < need:
            break
        start = time.time()
        x, y = (torch.from_numpy(t.numpy()).long() for t in next(run.iterator))
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, step, total)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.ravel())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            model.parameters(), config.global_clipnorm
        )
        optimizer.step()
        step += 1
        took = time.time() - start
        step_s = took if step_s is None else 0.9 * step_s + 0.1 * took
        if step % per_epoch == 0:
            start = time.time()
            records.append({"step": step, "val_bpc": validate()})
            val_s = time.time() - start
    if not records or records[-1]["step"] != step:
        records.append({"step": step, "val_bpc": validate()})
    print(
        "RACE "
        + json.dumps(
            {
                "records": records,
                "seconds": time.time() - launched,
                "steps": step,
                "ms_per_step": 1e3 * step_s,
            }
        ),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--launched", type=float, default=0.0)
    parser.add_argument("--budget", type=float, default=0.0)
    args = parser.parse_args()
    if args.child:
        twin(args.epochs, args.launched, args.budget)
        return
    harness.require_torch("lm_race")
    workdir = args.workdir or tempfile.mkdtemp(prefix="race-")
    command = [
        sys.executable,
        os.path.join(REPO, "train.py"),
        "--config",
        os.path.join(REPO, "configs", "lm.py"),
        "--workdir",
        os.path.join(workdir, "ours"),
        f"--config.num_epochs={args.epochs}",
    ]
    launched = time.time()
    subprocess.run(command, check=True, capture_output=True)
    budget = time.time() - launched
    with open(os.path.join(workdir, "ours", "metrics.jsonl")) as f:
        ours = [json.loads(line) for line in f]
    ours = [
        {"step": r["step"], "val_bpc": r["val_bpc"]}
        for r in ours
        if "val_bpc" in r
    ]
    print(f"ours: {budget:.0f} s, {json.dumps(ours)}", flush=True)

    launched = time.time()
    child = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            f"--epochs={args.epochs}",
            f"--launched={launched}",
            f"--budget={budget}",
        ],
        capture_output=True,
        text=True,
    )
    if child.returncode:
        sys.exit(child.stderr[-3000:])
    line = [s for s in child.stdout.splitlines() if s.startswith("RACE ")][-1]
    theirs = json.loads(line[len("RACE ") :])
    print(f"twin: {theirs['seconds']:.0f} s, {json.dumps(theirs)}")
    at_twin = {r["step"]: r["val_bpc"] for r in theirs["records"]}
    print(f"{'step':>6}{'ours bpc':>10}{'twin bpc':>10}")
    for r in ours:
        other = at_twin.get(r["step"])
        print(
            f"{r['step']:6}{r['val_bpc']:10.3f}"
            + (f"{other:10.3f}" if other is not None else f"{'-':>10}")
        )
    end = theirs["records"][-1]
    print(
        f"race over {budget:.0f} s: ours {ours[-1]['val_bpc']:.3f} bpc at "
        f"step {ours[-1]['step']}; twin {end['val_bpc']:.3f} at step "
        f"{end['step']} (difference ours - twin "
        f"{ours[-1]['val_bpc'] - end['val_bpc']:+.3f})"
    )
    print(json.dumps({"budget_s": budget, "ours": ours, "twin": theirs}))


if __name__ == "__main__":
    main()
