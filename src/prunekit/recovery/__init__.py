"""Recovery after pruning: LoRA fine-tuning or distillation from the dense model, merged back with the sparsity
mask re-applied."""
