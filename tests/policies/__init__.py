"""Tests of sft_callbacks/policies/."""
