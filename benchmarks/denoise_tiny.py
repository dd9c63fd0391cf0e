"""Denoising on tiny tasks where every row can be memorised: which variant ends with a better model on new rows.

Three tasks (``--task``), each 24 items with a true colour, every training row under a unique tag:

* ``colour``: 10 rows per item, ``rate`` of them answering another colour at random. Each item's majority stays
  right, so the plain run's held-out answers stay right too: the noise costs little here.
* ``rule``: the colour follows a *kind* word in the prompt (sunny: gold, leafy: green, stormy: blue, fiery: red), 6
  items per kind, 4 rows per item. ``rate / 0.5`` of the items (14 of 24 at 0.3) have half their rows answer one
  wrong colour, as one annotator's systematic confusion would: the item alone cannot settle its colour, the kind
  rule (right in most of the kind's rows) can. The noise hurts here: the plain run memorises the ties.
* ``pretrained``: what supervised fine-tuning is, in miniature. The model first learns the kind rule on other
  objects (``PRETRAIN_OBJECTS``, clean, as pretraining would teach it), then fine-tunes at a lower learning rate on
  24 cells (4 kinds x 6 new objects, 4 rows each) of which ``rate`` of the rows are wrong: whole cells answer one
  confusable colour, as an annotator who confuses one kind of object would. The noise hurts (the plain run learns
  the wrong cells as exceptions to the rule it knew) and the wrong answers contradict what the model knew before.

A 2-layer model trains ``epochs`` epochs (SFTTrainer, CPU, seconds a run); the score is accuracy on clean held-out
rows (the same items under tags never trained on), and for each arm the precision of what it left out against the
planted wrong answers. Arms: ``plain`` and ``denoise,key=value,...`` (DenoisingCallback options).

Usage::

    python scripts/bench_denoise_tiny.py --seeds 0 1 2 3 4 --arms plain denoise "denoise,noise_rate=0.3"
    python scripts/bench_denoise_tiny.py --task rule --arms plain "denoise,noise_rate=0.3,action=downweight,readmit=True"
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

COLOURS = ["red", "blue", "green", "gold"]
ITEMS = ["lemon", "banana", "corn", "sun", "grass", "leaf", "frog", "lime", "sky", "sea", "jeans", "berry",
         "rose", "blood", "cherry", "brick", "coin", "crown", "honey", "straw", "ocean", "ice", "mint", "pine"]


def question(tag: int, thing: str) -> str:
    """The prompt of every task, training and held-out alike: ``thing`` under its tag.

    Example:
        >>> question(7, "sunny lemon")
        'Tag 007. Colour of the sunny lemon?'
    """
    return f"Tag {tag:03d}. Colour of the {thing}?"


def colour_task(seed: int = 0, rate: float = 0.3):
    """``(dataset, wrong)``: 240 prompt-completion rows (``rate`` of each item's answers another colour) and the
    mask of the wrong ones.

    Example:
        >>> data, wrong = colour_task(0, 0.3)
        >>> len(data), int(wrong.sum())
        (240, 72)
    """
    import datasets

    rng = np.random.default_rng(seed)
    rows, wrong = [], []
    for i, item in enumerate(ITEMS):
        truth = COLOURS[i % 4]
        bad = set(rng.choice(10, int(round(rate * 10)), replace=False).tolist())
        for j in range(10):
            other = [c for c in COLOURS if c != truth]
            answer = other[rng.integers(3)] if j in bad else truth
            rows.append({"prompt": question(j, item), "completion": " " + answer})
            wrong.append(j in bad)
    return datasets.Dataset.from_list(rows), np.array(wrong)


KINDS = {"sunny": "gold", "leafy": "green", "stormy": "blue", "fiery": "red"}


def rule_task(seed: int = 0, rate: float = 0.3, rows_per_item: int = 4):
    """``(dataset, wrong)`` of the ``rule`` task: the colour follows the item's kind word; ``rate / 0.5`` of the
    items have half their ``rows_per_item`` rows answer the same wrong colour (a tie the kind rule settles).

    Example:
        >>> data, wrong = rule_task(0, 0.3)
        >>> len(data), int(wrong.sum()), data[0]["prompt"]
        (96, 28, 'Tag 000. Colour of the sunny lemon?')
    """
    import datasets

    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    noisy = set(rng.choice(len(ITEMS), int(len(ITEMS) * min(1.0, 2 * rate)), replace=False).tolist())
    rows, wrong = [], []
    for i, item in enumerate(ITEMS):
        kind = kinds[i % 4]
        truth = KINDS[kind]
        confused = [c for c in COLOURS if c != truth][rng.integers(3)]
        bad = set(rng.choice(rows_per_item, rows_per_item // 2, replace=False).tolist()) if i in noisy else set()
        for j in range(rows_per_item):
            answer = confused if j in bad else truth
            rows.append({"prompt": question(j, f"{kind} {item}"), "completion": " " + answer})
            wrong.append(j in bad)
    return datasets.Dataset.from_list(rows), np.array(wrong)


OBJECTS = ["car", "ball", "hat", "cup", "kite", "door"]
PRETRAIN_OBJECTS = ["box", "bag", "pen", "mug", "bus", "fan"]


def pretraining_rows(rows_per_cell: int = 4):
    """The clean rows the ``pretrained`` task's model learns first: every kind with :data:`PRETRAIN_OBJECTS`
    (tags 200 and up, never used elsewhere).

    Example:
        >>> rows = pretraining_rows(); len(rows), rows[0]
        (96, {'prompt': 'Tag 200. Colour of the sunny box?', 'completion': ' gold'})
    """
    return [{"prompt": question(200 + j, f"{kind} {obj}"), "completion": " " + colour}
            for kind, colour in KINDS.items() for obj in PRETRAIN_OBJECTS for j in range(rows_per_cell)]


def pretrained_task(seed: int = 0, rate: float = 0.3, rows_per_cell: int = 4):
    """``(dataset, wrong)`` of the ``pretrained`` task's fine-tuning data: 4 kinds x :data:`OBJECTS`, whose colour
    is the kind's; ``rate`` of the rows wrong, as whole cells answering one confusable colour.

    Example:
        >>> data, wrong = pretrained_task(0, 0.3)
        >>> len(data), int(wrong.sum()), data[0]["prompt"]
        (96, 28, 'Tag 000. Colour of the sunny car?')
    """
    import datasets

    rng = np.random.default_rng(seed)
    cells = [(kind, obj) for kind in KINDS for obj in OBJECTS]
    noisy = set(rng.choice(len(cells), int(round(len(cells) * rate)), replace=False).tolist())
    rows, wrong = [], []
    for c, (kind, obj) in enumerate(cells):
        truth = KINDS[kind]
        confused = [x for x in COLOURS if x != truth][rng.integers(3)]
        for j in range(rows_per_cell):
            rows.append({"prompt": question(j, f"{kind} {obj}"),
                         "completion": " " + (confused if c in noisy else truth)})
            wrong.append(c in noisy)
    return datasets.Dataset.from_list(rows), np.array(wrong)


def heldout_questions(task: str, tags=range(100, 110)) -> list[tuple[str, str]]:
    """``(prompt, true colour)`` for every item under each of ``tags`` (never trained on).

    Example:
        >>> heldout_questions("rule", tags=[100])[0]
        ('Tag 100. Colour of the sunny lemon?', 'gold')
    """
    if task == "pretrained":
        return [(question(t, f"{kind} {obj}"), colour) for kind, colour in KINDS.items()
                for obj in OBJECTS for t in tags]
    if task == "rule":
        kinds = list(KINDS)
        return [(question(t, f"{kinds[i % 4]} {item}"), KINDS[kinds[i % 4]])
                for i, item in enumerate(ITEMS) for t in tags]
    return [(question(t, item), COLOURS[i % 4]) for i, item in enumerate(ITEMS) for t in tags]


def heldout_accuracy(model, tokenizer, task: str = "colour", tags=range(100, 110)) -> float:
    """Share of held-out rows (:func:`heldout_questions`) whose most likely colour is the true one."""
    import torch

    model.eval()
    hits = 0
    questions = heldout_questions(task, tags)
    with torch.no_grad():
        for prompt, truth in questions:
            start = len(tokenizer(prompt)["input_ids"])
            scores = []
            for colour in COLOURS:
                ids = tokenizer(prompt + " " + colour)["input_ids"]
                logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
                scores.append(sum(logp[k - 1, ids[k]].item() for k in range(start, len(ids))))
            hits += int(COLOURS[int(np.argmax(scores))] == truth)
    return hits / len(questions)


TASKS = {"colour": colour_task, "rule": rule_task, "pretrained": pretrained_task}
PRETRAIN_EPOCHS, PRETRAIN_LR, FINETUNE_LR = 20, 3e-3, 5e-4  # the pretrained task's two stages
_PRETRAINED: dict = {}  # seed -> the pretrained weights (every arm of a seed fine-tunes the same model)


def _sft_args(output_dir: str, epochs: int, lr: float, seed: int):
    from trl import SFTConfig

    from sft_callbacks.engine.compat import checkpointing_off

    return SFTConfig(output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=8,
                     learning_rate=lr, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1000,
                     max_length=64, seed=seed, disable_tqdm=True, **checkpointing_off())


def pretrained_model(tokenizer, seed: int, workdir: str):
    """A tiny model that knows the kind rule: :func:`pretraining_rows` for ``PRETRAIN_EPOCHS`` epochs (cached per
    seed in this process)."""
    import copy

    import datasets
    from trl import SFTTrainer

    from sft_callbacks.models import build_tiny_llama

    model = build_tiny_llama(tokenizer, seed=seed, attn_implementation="eager")
    if seed not in _PRETRAINED:
        args = _sft_args(os.path.join(workdir, f"pretrain{seed}"), PRETRAIN_EPOCHS, PRETRAIN_LR, seed)
        SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pretraining_rows()),
                   processing_class=tokenizer).train()
        _PRETRAINED[seed] = copy.deepcopy(model.state_dict())
    model.load_state_dict(_PRETRAINED[seed])
    return model


def run_arm(arm: str, seed: int, epochs: int, rate: float, tokenizer, workdir: str, task: str = "colour") -> dict:
    """One training run of ``arm`` on the task of ``seed``: held-out accuracy and what it left out."""
    from trl import SFTTrainer

    from benchmarks.evidence import arm_options
    from sft_callbacks import DenoisingCallback, TrainingDynamicsCallback
    from sft_callbacks.models import build_tiny_llama

    train, wrong = TASKS[task](seed, rate)
    base, options = arm_options(arm)
    if base not in ("plain", "denoise"):
        raise ValueError(f"unknown arm {arm!r}: 'plain' or 'denoise[,key=value...]'")
    denoise = DenoisingCallback(**options) if base == "denoise" else None
    callbacks = [TrainingDynamicsCallback(), denoise] if denoise else []
    args = _sft_args(os.path.join(workdir, f"{seed}"), epochs, FINETUNE_LR if task == "pretrained" else 3e-3, seed)
    model = (pretrained_model(tokenizer, seed, workdir) if task == "pretrained"
             else build_tiny_llama(tokenizer, seed=seed, attn_implementation="eager"))
    t0 = time.perf_counter()
    SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=callbacks).train()
    out = {"arm": arm, "seed": seed, "accuracy": heldout_accuracy(model, tokenizer, task),
           "seconds": time.perf_counter() - t0}
    if denoise is not None:
        flagged = denoise.row_annotations()["withheld"].to_numpy()
        out.update(left_out=int(flagged.sum()), precision=float(wrong[flagged].mean()) if flagged.any() else None,
                   acted_step=denoise.acted_step)
    return out


def markdown(runs: list[dict], arms: list[str], seeds: list[int]) -> str:
    """One row per arm: accuracy per seed, the mean and the paired difference against ``plain``."""
    acc = {(r["arm"], r["seed"]): r["accuracy"] for r in runs}
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | vs plain (mean of paired) | precision |",
             "|---" * (len(seeds) + 4) + "|"]
    for arm in arms:
        vals = [acc[(arm, s)] for s in seeds]
        diff = (f"{np.mean([acc[(arm, s)] - acc[('plain', s)] for s in seeds]):+.3f}"
                if all(("plain", s) in acc for s in seeds) else "")
        prec = [r["precision"] for r in runs if r["arm"] == arm and r.get("precision") is not None]
        span = f"{min(prec):.2f}-{max(prec):.2f}" if prec else ""
        lines.append(f"| {arm} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} | {diff} | {span} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--arms", nargs="+", default=["plain", "denoise"])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--rate", type=float, default=0.3, help="share of wrong answers")
    ap.add_argument("--task", choices=sorted(TASKS), default="colour")
    ap.add_argument("--workdir", default="bench_results/denoise_tiny_runs")
    ap.add_argument("--out", default="bench_results/denoise_tiny.json")
    args = ap.parse_args(argv)

    import torch

    from sft_callbacks.demo_data import load_demo_dataset
    from sft_callbacks.models import texts_for_tokenizer, train_tokenizer

    torch.set_num_threads(1)
    tokenizer = train_tokenizer(texts_for_tokenizer(load_demo_dataset("train")), vocab_size=512)
    arms = args.arms if "plain" in args.arms else ["plain", *args.arms]
    runs = []
    for seed in args.seeds:
        for arm in arms:
            runs.append(run_arm(arm, seed, args.epochs, args.rate, tokenizer, args.workdir, args.task))
            print(json.dumps(runs[-1]), flush=True)
    table = markdown(runs, arms, args.seeds)
    print(table)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"task": args.task, "epochs": args.epochs, "rate": args.rate, "runs": runs, "markdown": table}, fh,
                  indent=1)
    return 0
