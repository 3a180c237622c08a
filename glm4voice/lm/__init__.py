"""GLM-4-Voice language model: config, model, loader, text tokenizer, prompt, sampling, generation."""
