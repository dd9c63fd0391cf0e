"""Tests of sft_callbacks/engine/."""
