"""WhisperVQ encoder configuration, read from the official ``config.json`` (SPEC §1.3).

The official ``WhisperVQConfig`` is a transformers ``WhisperConfig`` plus VQ fields, saved with every generic
``PretrainedConfig`` attribute. We keep the fields that shape the inference encoder, accept (and ignore) the other
known official fields, and reject anything else so that a typo or a different model cannot load silently.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from glm4voice.errors import ConfigError


@dataclass(frozen=True)
class TokenizerConfig:
    """Inference-relevant fields; defaults equal THUDM/glm-4-voice-tokenizer ``config.json`` (SPEC §1.3)."""

    d_model: int = 1280
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    encoder_layers: int = 32  # layers of the full ASR model; only quantize_position of them are built
    num_mel_bins: int = 128
    max_source_positions: int = 1500  # 50 Hz positions of a 30 s chunk
    activation_function: str = "gelu"
    scale_embedding: bool = False
    pooling_kernel_size: int = 4
    pooling_type: str = "avg"
    pooling_position: int = 16
    quantize_position: int = 16
    quantize_vocab_size: int = 16384
    quantize_causal_block_size: int = 200  # attention block in 50 Hz positions (4 s)
    quantize_causal_encoder: bool = False
    encoder_causal_attention: bool = False
    encoder_causal_convolution: bool = True
    quantize_encoder_only: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def num_layers(self) -> int:
        """Encoder layers that exist in the encoder-only checkpoint."""
        return self.quantize_position

    @classmethod
    def from_json(cls, path: str | Path) -> TokenizerConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read tokenizer config {path}: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "config") -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names - IGNORED_FIELDS)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; not a WhisperVQ tokenizer config?")
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Refuse configurations the inference encoder does not implement (they would give wrong tokens)."""
        problems = []
        if self.d_model % self.encoder_attention_heads:
            problems.append(f"d_model {self.d_model} not divisible by {self.encoder_attention_heads} heads")
        if not self.quantize_encoder_only:
            problems.append("quantize_encoder_only must be true (the released encoder-only checkpoint)")
        if self.pooling_type != "avg" or self.pooling_position != self.quantize_position:
            problems.append(f"pooling {self.pooling_type!r} at layer {self.pooling_position} with quantisation at "
                            f"layer {self.quantize_position} (only avg pooling right before quantisation is built)")
        if not self.encoder_causal_convolution:
            problems.append("encoder_causal_convolution must be true")
        if self.encoder_causal_attention or self.quantize_causal_encoder:
            problems.append("causal-attention variants are not implemented (block-causal mask only)")
        if self.activation_function != "gelu" or self.scale_embedding:
            problems.append(f"activation {self.activation_function!r} / scale_embedding {self.scale_embedding}")
        if not 0 < self.quantize_position <= self.encoder_layers:
            problems.append(f"quantize_position {self.quantize_position} outside 1..{self.encoder_layers}")
        if self.quantize_causal_block_size <= 0 or self.quantize_causal_block_size % self.pooling_kernel_size:
            problems.append(f"quantize_causal_block_size {self.quantize_causal_block_size} must be a positive "
                            f"multiple of pooling_kernel_size {self.pooling_kernel_size}")
        if problems:
            raise ConfigError(f"{source}: unsupported tokenizer config: " + "; ".join(problems))


# Fields of the official config.json that do not change the inference encoder: Whisper decoder / generation /
# training fields and the generic transformers PretrainedConfig attributes written by save_pretrained.
IGNORED_FIELDS = frozenset("""
    architectures model_type transformers_version torch_dtype use_cache is_encoder_decoder num_hidden_layers
    vocab_size decoder_layers decoder_attention_heads decoder_ffn_dim decoder_layerdrop decoder_start_token_id
    max_target_positions max_length bos_token_id eos_token_id pad_token_id begin_suppress_tokens suppress_tokens
    median_filter_width classifier_proj_size use_weighted_layer_sum init_std dropout attention_dropout
    activation_dropout encoder_layerdrop apply_spec_augment mask_time_prob mask_time_length mask_time_min_masks
    mask_feature_prob mask_feature_length mask_feature_min_masks quantize_ema_decay quantize_commit_coefficient
    quantize_loss_scale quantize_restart_interval skip_language_detection
    return_dict output_hidden_states output_attentions torchscript use_bfloat16 tf_legacy_loss pruned_heads
    tie_word_embeddings chunk_size_feed_forward is_decoder cross_attention_hidden_size add_cross_attention
    tie_encoder_decoder min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty temperature
    top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size
    bad_words_ids num_return_sequences output_scores return_dict_in_generate forced_bos_token_id
    forced_eos_token_id remove_invalid_values exponential_decay_length_penalty finetuning_task id2label label2id
    tokenizer_class prefix sep_token_id task_specific_params problem_type _name_or_path
""".split())
