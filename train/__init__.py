"""Fine-tuning open_clip (and the offline MLLM's models) on any supported dataset."""
