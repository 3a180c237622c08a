"""How fast is the GLM: prefill and decode tokens/s, next to the memory-bandwidth bound and to transformers.

    python benchmarks/lm.py [--shapes tiny,slice] [--device cpu] [--batches 1,4,8] [--prompt 64] [--steps 8]

Shapes: ``tiny`` (the reference vectors' config: hidden 64, 2 layers) and ``slice`` (the 9B's full width and
vocabulary, ``--layers`` layers, random weights). For each shape and dtype it prints:

- prefill tok/s (one prompt of ``--prompt`` tokens through the static cache),
- decode tok/s at each batch size (every slot one token per step), and uncached decode (the whole sequence
  recomputed each step, batch 1) with the cached/uncached ratio,
- the memory-bandwidth bound: bytes read per decode step (weights + KV cache) / measured read bandwidth,
- transformers' ``GlmForCausalLM`` (same shape, the same weight tensors shared, sdpa, its own KV cache) and our
  speed as a ratio of its speed; the max |logit difference| between the two checks they compute the same thing,
- int8 weight-only quantised decode (batch 1).

Nothing here is a pass/fail test; numbers depend on the machine (and on its load).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from glm4voice.lm.config import GLMConfig
from glm4voice.lm.generate import Generator
from glm4voice.lm.model import GLM
from glm4voice.lm.quant import quantize_model

SHAPES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
                 ffn_hidden_size=172, padded_vocab_size=512, seq_length=8192),
    "slice": dict(seq_length=8192),  # the release's width and vocabulary; --layers sets the depth
}


PREFILL_REPEATS = 4  # prompts per timed prefill call: one short call is easily distorted by a scheduler hiccup


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(cases: dict[str, dict[str, tuple]], repeats: int, device) -> dict[str, dict[str, float]]:
    """tokens/s (median) of every ``cases[impl][metric] = (fn, tokens)``. Implementations are timed in turn
    inside each repeat, so a change of machine load hits all of them alike."""
    for impl in cases.values():
        for fn, _ in impl.values():
            fn()  # warm-up
    times = {impl: {m: [] for m in c} for impl, c in cases.items()}
    for _ in range(repeats):
        for metric in next(iter(cases.values())):
            for impl, c in cases.items():
                if metric in c:
                    _sync(device)
                    t = time.perf_counter()
                    c[metric][0]()
                    _sync(device)
                    times[impl][metric].append(time.perf_counter() - t)
    return {impl: {m: cases[impl][m][1] / statistics.median(t) for m, t in ts.items()} for impl, ts in times.items()}


def read_bandwidth(device, mb: int = 512) -> float:
    """Bytes/s of a streaming read (a sum over ``mb`` MiB)."""
    x = torch.ones(mb * 2**20 // 4, device=device)
    return x.numel() * 4 * measure({"x": {"sum": (lambda: x.sum(), 1)}}, 5, device)["x"]["sum"]  # calls/s


def decode_bytes(model: GLM, batch: int, context: int) -> int:
    """Bytes one decode step must read: every weight except the embedding table (B rows of it), plus the KV
    cache of each slot."""
    cfg = model.cfg
    weights = sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if not n.startswith("embed."))
    kv = batch * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * context * model.dtype.itemsize
    return weights + kv


def ours_cases(model: GLM, ids: list[list[int]], prompt: int, steps: int, batches, device, uncached=True) -> dict:
    gen = Generator(model, max(batches), prompt + steps + 2, device=device)
    for s in range(max(batches)):
        gen.prefill(ids[s][:prompt], s)

    def prefill():
        for _ in range(PREFILL_REPEATS):
            gen.reset(0)
            gen.prefill(ids[0][:prompt], 0)

    def decode(b):
        slots = list(range(b))
        for s in slots:
            gen.held[s] = ids[s][:prompt]  # the cache rows past the prompt are simply overwritten
        for t in range(steps):
            gen.decode_step([ids[s][prompt + t] for s in slots], slots)

    @torch.inference_mode()
    def recompute():
        for t in range(steps):
            model(torch.tensor([ids[0][: prompt + t + 1]], device=device), last_only=True)

    cases = {"prefill": (prefill, PREFILL_REPEATS * prompt)}
    cases |= {f"decode_b{b}": (lambda b=b: decode(b), b * steps) for b in batches}
    if uncached:
        cases["uncached_b1"] = (recompute, steps)
    return cases


def ours_long_context(model: GLM, context: int, steps: int, device) -> dict:
    """Decode at batch 1 after ``context`` cached positions (random keys/values: timing does not depend on them)."""
    gen = Generator(model, 1, context + steps + 1, device=device)
    gen.cache.k.normal_()
    gen.cache.v.normal_()

    def decode():
        gen.held[0] = [1] * context
        for _ in range(steps):
            gen.decode_step([1], [0])

    return {"long": (decode, steps)}


def hf_long_context(hf, model: GLM, context: int, steps: int, device) -> dict:
    from transformers import DynamicCache

    c = model.cfg
    cache = DynamicCache(config=hf.config)
    for i in range(c.num_layers):
        shape = (1, c.num_kv_heads, context, c.head_dim)
        cache.update(torch.randn(shape, device=device, dtype=model.dtype),
                     torch.randn(shape, device=device, dtype=model.dtype), i)
    x = torch.ones(1, 1, dtype=torch.long, device=device)

    @torch.inference_mode()
    def decode():
        for _ in range(steps):
            hf(x, past_key_values=cache, use_cache=True)
        cache.crop(-steps)

    return {"long": (decode, steps)}


def hf_cases(hf, ids: list[list[int]], prompt: int, steps: int, batches, device) -> dict:
    x = torch.tensor(ids, device=device)
    with torch.inference_mode():
        pasts = {b: hf(x[:b, :prompt], use_cache=True, logits_to_keep=1).past_key_values for b in batches}

    @torch.inference_mode()
    def prefill():
        for _ in range(PREFILL_REPEATS):
            hf(x[:1, :prompt], use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def decode(b):
        for t in range(steps):
            hf(x[:b, prompt + t: prompt + t + 1], past_key_values=pasts[b], use_cache=True)
        pasts[b].crop(-steps)

    cases = {"prefill": (prefill, PREFILL_REPEATS * prompt)}
    return cases | {f"decode_b{b}": (lambda b=b: decode(b), b * steps) for b in batches}


def hf_twin(model: GLM):
    """transformers' GlmForCausalLM holding the same weight tensors (views, no copies)."""
    from transformers import GlmConfig, GlmForCausalLM
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    c = model.cfg
    hc = GlmConfig(vocab_size=c.padded_vocab_size, hidden_size=c.hidden_size, intermediate_size=c.ffn_hidden_size,
                   num_hidden_layers=c.num_layers, num_attention_heads=c.num_attention_heads,
                   num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, rms_norm_eps=c.layernorm_epsilon,
                   max_position_embeddings=c.seq_length, attention_bias=c.add_qkv_bias, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "default", "rope_theta": c.rope_base, "partial_rotary_factor": 0.5},
                   pad_token_id=None)
    hc._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = GlmForCausalLM(hc)
    q, kv = c.num_attention_heads * c.head_dim, c.num_kv_heads * c.head_dim
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight,
          "lm_head.weight": model.output.weight}
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        w, b = layer.attn.qkv.weight, layer.attn.qkv.bias
        for name, sl in (("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, q + 2 * kv))):
            sd[p + f"self_attn.{name}_proj.weight"], sd[p + f"self_attn.{name}_proj.bias"] = w[sl], b[sl]
        sd |= {p + "self_attn.o_proj.weight": layer.attn.out.weight, p + "mlp.gate_up_proj.weight": layer.mlp.up.weight,
               p + "mlp.down_proj.weight": layer.mlp.down.weight, p + "input_layernorm.weight": layer.attn_norm.weight,
               p + "post_attention_layernorm.weight": layer.mlp_norm.weight}
    hf.load_state_dict(sd, strict=True, assign=True)
    hf.model.rotary_emb = GlmRotaryEmbedding(hc).to(model.device)
    return hf.eval()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="tiny,slice")
    ap.add_argument("--layers", type=int, default=2, help="layers of the full-width slice")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 for tiny; bfloat16 for the slice")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--context", type=int, default=2048, help="cached positions of the long-context decode row "
                    "(0: skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = read_bandwidth(args.device)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"measured read bandwidth {bw / 1e9:.1f} GB/s; prompt {args.prompt}, {args.steps} decode steps")
    rows = []
    for shape in args.shapes.split(","):
        cfg = GLMConfig(**SHAPES[shape], **({"num_layers": args.layers} if shape == "slice" else {}))
        dtype = getattr(torch, args.dtype or ("float32" if shape == "tiny" else "bfloat16"))
        torch.manual_seed(0)
        with torch.device(args.device):
            model = GLM(cfg).to(dtype).eval()
        model.init_weights(0.02)
        ids = torch.randint(0, cfg.padded_vocab_size, (max(batches), args.prompt + args.steps + 1)).tolist()
        cases = {"ours": ours_cases(model, ids, args.prompt, args.steps, batches, args.device)}
        if args.context:
            cases["ours"] |= ours_long_context(model, args.context, args.steps, args.device)
        diff = None
        if not args.no_hf:
            try:
                hf = hf_twin(model)
            except ImportError:
                print("transformers is not installed: skipping the GlmForCausalLM comparison")
            except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:  # another transformers API
                print(f"skipping the GlmForCausalLM comparison: {type(e).__name__}: {e}")
            else:
                with torch.inference_mode():
                    x = torch.tensor(ids[:1], device=args.device)
                    diff = (hf(x).logits.float() - model(x).float()).abs().max().item()
                cases["hf"] = hf_cases(hf, ids, args.prompt, args.steps, batches, args.device)
                if args.context:
                    cases["hf"] |= hf_long_context(hf, model, args.context, args.steps, args.device)
        res = measure(cases, args.repeats, args.device)
        ours, hf_res = res["ours"], res.get("hf", {})
        bound = {b: b * bw / decode_bytes(model, b, args.prompt + args.steps) for b in batches}
        name = f"{shape} ({cfg.num_layers}L, h{cfg.hidden_size}, {str(dtype)[6:]})"
        rows.append((name, "prefill tok/s", ours["prefill"], None, hf_res.get("prefill")))
        for b in batches:
            rows.append((name, f"decode b{b} tok/s", ours[f"decode_b{b}"], bound[b], hf_res.get(f"decode_b{b}")))
        if args.context:
            rows.append((name, f"decode b1 @ctx {args.context} tok/s", ours["long"],
                         bw / decode_bytes(model, 1, args.context), hf_res.get("long")))
        rows.append((name, "uncached decode b1 tok/s", ours["uncached_b1"], None, None))
        rows.append((name, "cached / uncached (b1)", ours["decode_b1"] / ours["uncached_b1"], None, None))
        if diff is not None:
            rows.append((name, "max abs logit diff vs HF", diff, None, None))
            del hf, cases
        quantize_model(model)
        q = measure({"q": ours_cases(model, ids, args.prompt, args.steps, [1], args.device, uncached=False)},
                    args.repeats, args.device)["q"]
        rows.append((name, "int8 decode b1 tok/s", q["decode_b1"],
                     bw / decode_bytes(model, 1, args.prompt + args.steps), None))
        del model
    print(f"\n| {'model':<28} | {'metric':<26} | {'ours':>10} | {'bound':>10} | {'% bound':>7} | {'HF':>10} | "
          f"{'ours/HF':>7} |")
    print(f"|{'-' * 30}|{'-' * 28}|{'-' * 12}:|{'-' * 12}:|{'-' * 9}:|{'-' * 12}:|{'-' * 9}:|")
    for name, metric, v, bound, h in rows:
        fmt = (lambda x: f"{x:.3g}") if "diff" in metric else (lambda x: f"{x:,.1f}")
        print(f"| {name:<28} | {metric:<26} | {fmt(v):>10} | {'' if bound is None else f'{bound:,.1f}':>10} | "
              f"{'' if bound is None else f'{100 * v / bound:.0f}%':>7} | {'' if h is None else f'{h:,.1f}':>10} | "
              f"{'' if h is None else f'{v / h:.2f}x':>7} |")


if __name__ == "__main__":
    main()
