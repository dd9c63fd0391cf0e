"""LoRA with sft-callbacks: the same callbacks on a peft model (the capture reads the adapted model's losses).

    python scripts/examples/lora.py --tiny
    python scripts/examples/lora.py --model HuggingFaceTB/SmolLM2-135M-Instruct --max-steps 200

Trains LoRA adapters on the packaged demo set with validation-guided resampling (evaluation every 10 steps on
the validation split, steering the mixture over domains) and prints the mixture it settled on.
"""

from __future__ import annotations

import argparse

from peft import LoraConfig
import torch
from trl import SFTConfig, SFTTrainer

from sft_callbacks import TrainingDynamicsCallback, ValidationGuidedResamplingCallback
from sft_callbacks.demo_data import load_demo_dataset


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="Hub id or local folder")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama and a local tokenizer (offline)")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--output-dir", default="lora_example_output")
    args = ap.parse_args(argv)

    train, validation = load_demo_dataset("train"), load_demo_dataset("validation")
    model, tokenizer = args.model, None
    if args.tiny:
        from sft_callbacks.models import build_tiny_llama, texts_for_tokenizer, train_tokenizer

        tokenizer = train_tokenizer(texts_for_tokenizer(train), vocab_size=512)
        model = build_tiny_llama(tokenizer, hidden_size=64, num_layers=2)

    steer = ValidationGuidedResamplingCallback(group_column="domain")
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=8,
                       per_device_eval_batch_size=16, learning_rate=1e-3, report_to=[], save_strategy="no",
                       use_cpu=not torch.cuda.is_available(),
                       eval_strategy="steps", eval_steps=10, padding_free=True, max_length=None),
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM", target_modules="all-linear"),
        callbacks=[TrainingDynamicsCallback(), steer],
    )
    trainer.train()
    print("validation-guided mixture:", dict(zip(steer.group_names, steer.mixture.round(3).tolist())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
