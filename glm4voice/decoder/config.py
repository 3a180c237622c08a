"""Decoder configuration: frozen dataclasses filled from the official ``config.yaml`` read as data.

The official file is HyperPyYAML: tags such as ``!new:cosyvoice.flow.flow.MaskedDiffWithXvec`` would import
and instantiate classes, and ``!apply:torch.manual_seed`` would run functions. We never do either:
``DataLoader`` (a ``yaml.SafeLoader``) turns every tag into plain data, and ``!ref <name>`` into the value
of the top-level key ``name``. Defaults equal the released THUDM/glm-4-voice-decoder (SPEC §3.1).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glm4voice.errors import ConfigError

GROUPNORM_GROUPS = 8  # GroupNorm groups of the U-Net's Block1D (Matcha default), so channels must be multiples


# --- YAML as data ------------------------------------------------------------------------------------------
class Tagged(dict):
    """A mapping that carried a HyperPyYAML tag (e.g. ``!new:pkg.Class``); the tag is kept, never acted on."""

    def __init__(self, tag: str, value: Any):
        super().__init__(value if isinstance(value, dict) else {})
        self.tag = tag
        self.value = value  # the raw node value for scalar / sequence tags


class _Ref(str):
    """``!ref <name>``: resolved to the top-level value after loading."""


class DataLoader(yaml.SafeLoader):
    """SafeLoader that reads any ``!tag`` as data: mappings become ``Tagged`` dicts, ``!ref`` a reference."""


def _construct_any_tag(loader: DataLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    tag = "!" + tag_suffix
    if tag == "!ref":
        return _Ref(value)
    return Tagged(tag, value)


DataLoader.add_multi_constructor("!", _construct_any_tag)

_REF = re.compile(r"^<([A-Za-z_][\w.]*)>$")


def _resolve_refs(obj: Any, top: dict) -> Any:
    if isinstance(obj, _Ref):
        m = _REF.match(obj.strip())
        if not m or m.group(1) not in top:
            raise ConfigError(f"config.yaml: cannot resolve !ref {obj!r} (only top-level names are supported)")
        return _resolve_refs(top[m.group(1)], top)
    if isinstance(obj, Tagged):
        out = Tagged(obj.tag, {k: _resolve_refs(v, top) for k, v in obj.items()})
        if not isinstance(obj.value, dict):
            out.value = _resolve_refs(obj.value, top)
        return out
    if isinstance(obj, dict):
        return {k: _resolve_refs(v, top) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_refs(v, top) for v in obj]
    return obj


def read_yaml_as_data(path: str | Path) -> dict:
    """Parse a HyperPyYAML file into plain dicts/lists/scalars (``Tagged`` dicts for tagged nodes)."""
    try:
        doc = yaml.load(Path(path).read_text(), Loader=DataLoader)  # noqa: S506 - DataLoader is a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return _resolve_refs(doc, doc)


# --- dataclasses -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderConfig:
    """BlockConformerEncoder (SPEC §3.1/§3.2.3): 6 pre-norm layers, rel-pos MHA, no conv module, no macaron."""

    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    block_size: int = 10  # tokens; attention is bidirectional within a block, causal across blocks
    max_len: int = 5000  # EspnetRelPositionalEncoding table size (grown on demand)


@dataclass(frozen=True)
class EstimatorConfig:
    """ConditionalDecoder U-Net (SPEC §3.4)."""

    in_channels: int = 320
    out_channels: int = 80
    channels: tuple[int, ...] = (256, 256)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8


@dataclass(frozen=True)
class CFMConfig:
    """ConditionalCFM sampler (SPEC §3.3). The official ``flow.inference`` fixes n_timesteps at 10 and the
    temperature at 1; a glm4voice config may set ``n_timesteps`` and ``temperature`` (the scale of the initial
    noise) in ``cfm_params`` (our extensions, ignored by the official code: the embedded decoder uses 4 steps, which
    its judge WER does not tell apart from 10, docs/decoder.md)."""

    spk_emb_dim: int = 80
    inference_cfg_rate: float = 0.7
    n_timesteps: int = 10
    temperature: float = 1.0


@dataclass(frozen=True)
class FlowConfig:
    """MaskedDiffWithXvec (SPEC §3.1-3.2)."""

    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 16384
    input_frame_rate: float = 12.5  # tokens per second
    regulator_channels: int = 80
    regulator_stages: int = 4  # len(sampling_ratios); the values themselves are unused
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    cfm: CFMConfig = field(default_factory=CFMConfig)


@dataclass(frozen=True)
class HiftConfig:
    """HiFTGenerator (SPEC §3.5)."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512

    @property
    def upsample_factor(self) -> int:
        """Output samples per mel frame: prod(upsample_rates) * hop_len (= 256)."""
        n = self.hop_len
        for r in self.upsample_rates:
            n *= r
        return n


@dataclass(frozen=True)
class DecoderConfig:
    sample_rate: int = 22050
    flow: FlowConfig = field(default_factory=FlowConfig)
    hift: HiftConfig = field(default_factory=HiftConfig)

    def with_flow_steps(self, steps: int) -> DecoderConfig:
        """This config with ``steps`` Euler steps of the flow (``cfm_params.n_timesteps``); validated."""
        return self.with_cfm(n_timesteps=steps)

    def with_flow_temperature(self, temperature: float) -> DecoderConfig:
        """This config with the flow's initial noise scaled by ``temperature`` (``cfm_params.temperature``)."""
        return self.with_cfm(temperature=temperature)

    def with_cfm(self, **changes) -> DecoderConfig:
        """This config with ``changes`` to the flow's sampler (CFMConfig fields); validated."""
        cfm = dataclasses.replace(self.flow.cfm, **changes)
        cfg = dataclasses.replace(self, flow=dataclasses.replace(self.flow, cfm=cfm))
        validate(cfg)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> DecoderConfig:
        return config_from_data(read_yaml_as_data(path), source=str(path))

    def to_yaml(self) -> str:
        """This config as a ``config.yaml`` in the released structure (see ``config_to_yaml``)."""
        return config_to_yaml(self)

    @classmethod
    def small(cls, *, vocab_size: int = 16384, d_model: int = 64, heads: int = 2, ffn: int = 128,
              encoder_layers: int = 2, unet_channels: int = 32, unet_transformer_blocks: int = 1,
              unet_mid_blocks: int = 2, unet_heads: int = 2, unet_head_dim: int = 16,
              hift_channels: int = 64) -> DecoderConfig:
        """A small decoder of the same architecture (for our own training and for tests).

        The defaults are the sizes of the reference test checkpoint (``../shared/reference/decoder``) except
        the vocabulary; everything not named here (80 mels, 22.05 kHz, 12.5 Hz, encoder block 10, CFG 0.7,
        HiFT rates and kernels) keeps the released value, so the streaming code and the official loaders apply.
        """
        c = cls()
        enc = dataclasses.replace(c.flow.encoder, input_size=d_model, output_size=d_model, attention_heads=heads,
                                  linear_units=ffn, num_blocks=encoder_layers)
        est = dataclasses.replace(c.flow.estimator, channels=(unet_channels, unet_channels),
                                  attention_head_dim=unet_head_dim, n_blocks=unet_transformer_blocks,
                                  num_mid_blocks=unet_mid_blocks, num_heads=unet_heads)
        flow = dataclasses.replace(c.flow, input_size=d_model, vocab_size=vocab_size, encoder=enc, estimator=est)
        cfg = dataclasses.replace(c, flow=flow, hift=dataclasses.replace(c.hift, base_channels=hift_channels,
                                                                          f0_cond_channels=hift_channels))
        validate(cfg)
        return cfg


# --- mapping official fields -------------------------------------------------------------------------------
# Official fields we read, official fields that only matter for training (ignored), and fields whose value we
# require because only that variant is implemented. Anything else is an unknown field -> ConfigError.
_TOP_KNOWN = {"sample_rate", "text_encoder_input_size", "llm_input_size", "llm_output_size", "spk_embed_dim",
              "llm", "flow", "hift"}
_FLOW_USED = {"input_size", "output_size", "spk_embed_dim", "vocab_size", "input_frame_rate"}
_FLOW_IGNORED = {"only_mask_loss", "output_type"}
_ENC_USED = {"input_size", "output_size", "attention_heads", "linear_units", "num_blocks", "block_size"}
_ENC_IGNORED = {"dropout_rate", "positional_dropout_rate", "attention_dropout_rate", "use_dynamic_chunk",
                "use_dynamic_left_chunk", "gradient_checkpointing", "global_cmvn"}
_ENC_REQUIRED = {"normalize_before": True, "input_layer": "linear", "pos_enc_layer_type": "rel_pos_espnet",
                 "selfattention_layer_type": "block_rel_selfattn", "use_cnn_module": False, "macaron_style": False,
                 "static_chunk_size": 0, "activation_type": "swish", "key_bias": True}
_CFM_USED = {"inference_cfg_rate", "n_timesteps", "temperature"}
_CFM_IGNORED = {"in_channels", "n_spks", "sigma_min", "training_cfg_rate", "reg_loss_type"}
_CFM_REQUIRED = {"solver": "euler", "t_scheduler": "cosine"}
_EST_USED = {"in_channels", "out_channels", "channels", "attention_head_dim", "n_blocks", "num_mid_blocks",
             "num_heads"}
_EST_REQUIRED = {"dropout": 0, "act_fn": "gelu"}
_HIFT_USED = {"in_channels", "base_channels", "nb_harmonics", "sampling_rate", "nsf_alpha", "nsf_sigma",
              "nsf_voiced_threshold", "upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes",
              "resblock_dilation_sizes", "source_resblock_kernel_sizes", "source_resblock_dilation_sizes",
              "lrelu_slope", "audio_limit"}


def _check(section: str, d: dict, used: set, ignored: set = frozenset(), required: dict | None = None,
           nested: set = frozenset()) -> None:
    required = required or {}
    unknown = sorted(set(d) - used - ignored - set(required) - nested)
    if unknown:
        raise ConfigError(f"{section}: unknown field(s) {', '.join(unknown)}")
    for k, want in required.items():
        if k in d and d[k] != want:
            raise ConfigError(f"{section}.{k} = {d[k]!r} is not supported (only {want!r} is implemented)")


def _section(d: dict, key: str, where: str) -> dict:
    if key not in d or not isinstance(d[key], dict):
        raise ConfigError(f"{where}: missing section {key!r}")
    return d[key]


def _tuple(v: Any) -> Any:
    return tuple(_tuple(x) for x in v) if isinstance(v, list | tuple) else v


def _pick(d: dict, keys: set) -> dict:
    return {k: _tuple(d[k]) for k in keys if k in d}


def config_from_data(doc: dict, *, source: str = "config.yaml") -> DecoderConfig:
    """Build a ``DecoderConfig`` from the parsed official YAML (see ``read_yaml_as_data``)."""
    top = {k: v for k, v in doc.items() if not str(k).startswith("__")}  # __set_seed*: process-wide seeding, ignored
    _check(source, top, _TOP_KNOWN)
    flow_d = _section(top, "flow", source)
    _check(f"{source}: flow", flow_d, _FLOW_USED, _FLOW_IGNORED, nested={"encoder", "length_regulator", "decoder"})
    enc_d = _section(flow_d, "encoder", "flow")
    _check("flow.encoder", enc_d, _ENC_USED, _ENC_IGNORED, _ENC_REQUIRED)
    reg_d = _section(flow_d, "length_regulator", "flow")
    _check("flow.length_regulator", reg_d, {"channels", "sampling_ratios"}, {"out_channels"})
    cfm_d = _section(flow_d, "decoder", "flow")
    _check("flow.decoder", cfm_d, {"spk_emb_dim"}, _CFM_IGNORED, nested={"cfm_params", "estimator"})
    params = _section(cfm_d, "cfm_params", "flow.decoder")
    params = params.get("content", params) if isinstance(params, Tagged) or "content" in params else params
    _check("flow.decoder.cfm_params", params, _CFM_USED, _CFM_IGNORED, _CFM_REQUIRED)
    est_d = _section(cfm_d, "estimator", "flow.decoder")
    _check("flow.decoder.estimator", est_d, _EST_USED, set(), _EST_REQUIRED)
    hift_d = _section(top, "hift", source)
    _check(f"{source}: hift", hift_d, _HIFT_USED, nested={"istft_params", "f0_predictor"})
    istft = hift_d.get("istft_params", {})
    _check("hift.istft_params", istft, {"n_fft", "hop_len"})
    f0_d = hift_d.get("f0_predictor", {})
    _check("hift.f0_predictor", f0_d, {"cond_channels"}, required={"num_class": 1, "in_channels": hift_d.get(
        "in_channels", 80)})
    try:
        encoder = EncoderConfig(**_pick(enc_d, _ENC_USED))
        estimator = EstimatorConfig(**_pick(est_d, _EST_USED))
        cfm = CFMConfig(**_pick(cfm_d, {"spk_emb_dim"}), **_pick(params, _CFM_USED))
        flow = FlowConfig(**_pick(flow_d, _FLOW_USED), encoder=encoder, estimator=estimator, cfm=cfm,
                          regulator_channels=reg_d.get("channels", 80),
                          regulator_stages=len(reg_d.get("sampling_ratios", [1, 1, 1, 1])))
        hift = HiftConfig(**_pick(hift_d, _HIFT_USED), **_pick(istft, {"n_fft", "hop_len"}),
                          f0_cond_channels=f0_d.get("cond_channels", 512))
        cfg = DecoderConfig(sample_rate=int(top.get("sample_rate", 22050)), flow=flow, hift=hift)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from e
    validate(cfg)
    return cfg


def validate(cfg: DecoderConfig) -> None:
    """Consistency checks between sections; raises ConfigError with the offending values."""
    f, h = cfg.flow, cfg.hift
    if f.encoder.input_size != f.input_size:
        raise ConfigError(f"flow.encoder.input_size {f.encoder.input_size} != flow.input_size {f.input_size}")
    if f.encoder.output_size % f.encoder.attention_heads:
        raise ConfigError("flow.encoder.output_size must be divisible by attention_heads")
    if f.estimator.in_channels != 4 * f.output_size:
        raise ConfigError(f"flow.decoder.estimator.in_channels {f.estimator.in_channels} != 4 x {f.output_size}")
    if not isinstance(f.cfm.n_timesteps, int) or isinstance(f.cfm.n_timesteps, bool) or f.cfm.n_timesteps < 1:
        raise ConfigError(f"flow.decoder.cfm_params.n_timesteps must be a positive integer, not {f.cfm.n_timesteps!r}")
    t = f.cfm.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 2.0:
        raise ConfigError(f"flow.decoder.cfm_params.temperature must be a number in (0, 2], not {t!r}")
    if f.cfm.spk_emb_dim != f.output_size:
        raise ConfigError(f"flow.decoder.spk_emb_dim {f.cfm.spk_emb_dim} != flow.output_size {f.output_size}")
    if h.in_channels != f.output_size:
        raise ConfigError(f"hift.in_channels {h.in_channels} != flow.output_size {f.output_size}")
    if h.sampling_rate != cfg.sample_rate:
        raise ConfigError(f"hift.sampling_rate {h.sampling_rate} != sample_rate {cfg.sample_rate}")
    if len(h.upsample_rates) != len(h.upsample_kernel_sizes) or len(h.upsample_rates) != len(
            h.source_resblock_kernel_sizes):
        raise ConfigError("hift: upsample_rates, upsample_kernel_sizes and source_resblock_kernel_sizes differ in "
                          "length")
    if any(c % GROUPNORM_GROUPS for c in f.estimator.channels):
        raise ConfigError(f"flow.decoder.estimator.channels {f.estimator.channels} must be multiples of "
                          f"{GROUPNORM_GROUPS} (GroupNorm groups of the U-Net blocks)")
    if h.base_channels % 2 ** len(h.upsample_rates):
        raise ConfigError(f"hift.base_channels {h.base_channels} must be divisible by 2^{len(h.upsample_rates)} "
                          "(it halves at every upsampling stage)")


def to_dict(cfg: DecoderConfig) -> dict:
    return dataclasses.asdict(cfg)


# --- writing -------------------------------------------------------------------------------------------------
class _Raw(str):
    """Text written to YAML as is."""


def _yaml_value(v: Any) -> str:
    if isinstance(v, _Raw):
        return str(v)
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        text = repr(v)
        if "." not in text or "inf" in text or "nan" in text:  # PyYAML's float needs a dot ('1e-06' is a string)
            raise ConfigError(f"cannot write float {v!r} so that it reads back as a float")
        return text
    if isinstance(v, str):
        return f"'{v}'"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} value {v!r} to config.yaml")


def _yaml_block(fields: dict[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    out = []
    for k, v in fields.items():
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and v[0].startswith("!"):
            out.append(f"{pad}{k}: {v[0]}")  # (tag, nested fields)
            out += _yaml_block(v[1], indent + 4)
        elif isinstance(v, dict):
            out.append(f"{pad}{k}:")
            out += _yaml_block(v, indent + 4)
        else:
            out.append(f"{pad}{k}: {_yaml_value(v)}")
    return out


def config_to_yaml(cfg: DecoderConfig) -> str:
    """``config.yaml`` text in the structure of the released file (SPEC §3.1), read back by ``from_yaml``.

    The class tags are the official ones, so the official ``AudioDecoder`` could load the folder too; to us they
    are data. Left out on purpose: the seed header (process-wide seeding) and the unused CosyVoice ``llm``
    section (SPEC §6.9). Training-only fields are written with their released values.
    """
    validate(cfg)
    f, e, est, h = cfg.flow, cfg.flow.encoder, cfg.flow.estimator, cfg.hift
    encoder = {"output_size": e.output_size, "attention_heads": e.attention_heads, "linear_units": e.linear_units,
               "num_blocks": e.num_blocks, "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
               "attention_dropout_rate": 0.1, "normalize_before": True, "input_layer": "linear",
               "pos_enc_layer_type": "rel_pos_espnet", "selfattention_layer_type": "block_rel_selfattn",
               "block_size": e.block_size, "input_size": e.input_size, "use_cnn_module": False,
               "macaron_style": False}
    cfm_params = {"content": {"sigma_min": _Raw("1.0e-06"), "solver": "euler", "t_scheduler": "cosine",
                              "training_cfg_rate": 0.2, "inference_cfg_rate": f.cfm.inference_cfg_rate,
                              "reg_loss_type": "l1"}}
    if f.cfm.n_timesteps != CFMConfig.n_timesteps:  # written only when it differs from the official 10
        cfm_params["content"]["n_timesteps"] = f.cfm.n_timesteps
    if f.cfm.temperature != CFMConfig.temperature:  # likewise: written only when it differs from the official 1
        cfm_params["content"]["temperature"] = float(f.cfm.temperature)
    estimator = {"in_channels": est.in_channels, "out_channels": est.out_channels, "channels": est.channels,
                 "dropout": 0, "attention_head_dim": est.attention_head_dim, "n_blocks": est.n_blocks,
                 "num_mid_blocks": est.num_mid_blocks, "num_heads": est.num_heads, "act_fn": "gelu"}
    flow = {"input_size": f.input_size, "output_size": f.output_size, "spk_embed_dim": f.spk_embed_dim,
            "output_type": "mel", "vocab_size": f.vocab_size, "input_frame_rate": f.input_frame_rate,
            "only_mask_loss": True,
            "encoder": ("!new:cosyvoice.transformer.encoder.BlockConformerEncoder", encoder),
            "length_regulator": ("!new:cosyvoice.flow.length_regulator.InterpolateRegulator",
                                 {"channels": f.regulator_channels, "sampling_ratios": (1,) * f.regulator_stages}),
            "decoder": ("!new:cosyvoice.flow.flow_matching.ConditionalCFM",
                        {"in_channels": 240, "n_spks": 1, "spk_emb_dim": f.cfm.spk_emb_dim,
                         "cfm_params": ("!new:omegaconf.DictConfig", cfm_params),
                         "estimator": ("!new:cosyvoice.flow.decoder.ConditionalDecoder", estimator)})}
    hift = {"in_channels": h.in_channels, "base_channels": h.base_channels, "nb_harmonics": h.nb_harmonics,
            "sampling_rate": h.sampling_rate, "nsf_alpha": h.nsf_alpha, "nsf_sigma": h.nsf_sigma,
            "nsf_voiced_threshold": float(h.nsf_voiced_threshold), "upsample_rates": h.upsample_rates,
            "upsample_kernel_sizes": h.upsample_kernel_sizes,
            "istft_params": {"n_fft": h.n_fft, "hop_len": h.hop_len},
            "resblock_kernel_sizes": h.resblock_kernel_sizes, "resblock_dilation_sizes": h.resblock_dilation_sizes,
            "source_resblock_kernel_sizes": h.source_resblock_kernel_sizes,
            "source_resblock_dilation_sizes": h.source_resblock_dilation_sizes,
            "lrelu_slope": h.lrelu_slope, "audio_limit": h.audio_limit,
            "f0_predictor": ("!new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor",
                             {"num_class": 1, "in_channels": h.in_channels, "cond_channels": h.f0_cond_channels})}
    lines = ["# GLM-4-Voice speech decoder config in the released structure (written by glm4voice).",
             "# Class tags are kept for compatibility; glm4voice reads them as data and never builds from them.",
             f"sample_rate: {cfg.sample_rate}", f"spk_embed_dim: {f.spk_embed_dim}", ""]
    lines += _yaml_block({"flow": ("!new:cosyvoice.flow.flow.MaskedDiffWithXvec", flow)}, 0) + [""]
    lines += _yaml_block({"hift": ("!new:cosyvoice.hifigan.generator.HiFTGenerator", hift)}, 0)
    return "\n".join(lines) + "\n"
