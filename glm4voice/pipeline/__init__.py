"""Composition of tokenizer, LM and decoder into a voice chat (see docs/INTERFACES.md)."""
