"""Tests of how users train with the callbacks: recipes, two processes, DeepSpeed, FSDP, LoRA, the examples."""
