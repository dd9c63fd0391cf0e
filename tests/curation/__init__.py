"""Tests of sft_callbacks/curation/."""
