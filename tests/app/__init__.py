"""Tests of sft_callbacks/app/."""
