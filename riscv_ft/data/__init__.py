"""Data: loading, cleaning, splitting and tokenizing (pipeline), batches (batch, packing),
generated, assembler-verified pairs (synthetic, tasks, mixing) and the shipped user-style
evaluation prompts (user_prompts). `smoke.jsonl` is a small file written for this project in
the dataset's schema."""
