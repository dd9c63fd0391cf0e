"""Your SFTTrainer script with sft-callbacks added: the only change is the ``callbacks=[...]`` line.

    python scripts/examples/sft_trainer.py --tiny            # a tiny model built in code, seconds on a CPU
    python scripts/examples/sft_trainer.py --model HuggingFaceTB/SmolLM2-135M-Instruct --max-steps 300

Trains on the packaged demo set (six domains, imbalanced), with per-sample dynamics, group balance and
hard-example mining, and writes the 10 hardest rows and the mixture drawn to stdout.
"""

from __future__ import annotations

import argparse

import torch
from trl import SFTConfig, SFTTrainer

from sft_callbacks import GroupBalanceCallback, HardExampleMiningCallback, TrainingDynamicsCallback
from sft_callbacks.demo_data import load_demo_dataset


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="Hub id or local folder")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama and a local tokenizer (offline)")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--output-dir", default="sft_example_output")
    args = ap.parse_args(argv)

    train = load_demo_dataset("train")
    model, tokenizer = args.model, None
    if args.tiny:
        from sft_callbacks.models import build_tiny_llama, texts_for_tokenizer, train_tokenizer

        tokenizer = train_tokenizer(texts_for_tokenizer(train), vocab_size=512)
        model = build_tiny_llama(tokenizer, hidden_size=64, num_layers=2)

    dynamics = TrainingDynamicsCallback()
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=8,
                       learning_rate=1e-3 if args.tiny else 2e-5, report_to=[], save_strategy="no",
                       use_cpu=not torch.cuda.is_available(),
                       padding_free=True, max_length=None),
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[dynamics, GroupBalanceCallback(group_column="domain"),  # <- the only change to your script
                   HardExampleMiningCallback(group_column="domain")],
    )
    trainer.train()

    frame = dynamics.dynamics().join(train.select_columns(["domain"]).to_pandas())
    print(frame.nlargest(10, "loss_last")[["domain", "times_seen", "loss_last", "loss_mean"]].to_string())
    drawn = frame.groupby("domain")["times_seen"].sum()
    print("mixture drawn:", (drawn / drawn.sum()).round(3).to_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
