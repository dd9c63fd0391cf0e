"""Tests of sft_callbacks/hub/."""
