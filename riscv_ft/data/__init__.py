"""Data: loading, cleaning, splitting, tokenizing and batching (pipeline), and generated,
assembler-verified pairs (synthetic). `smoke.jsonl` is a small file written for this
project in the dataset's schema."""
