"""Generation: static KV cache equals the full forward, reference greedy decode through the cache, batch slots at
different positions, KV reuse across turns, context limits, and the sampling functions."""

import pytest
import torch
from safetensors.numpy import load_file as load_np

from glm4voice.errors import ContextLengthError, TokenError
from glm4voice.lm.config import GLMConfig
from glm4voice.lm.generate import Generator, KVCache, generate
from glm4voice.lm.load import load_lm
from glm4voice.lm.model import GLM
from glm4voice.lm.sampling import SamplingParams, make_generator, sample, sample_first, top_k_filter, top_p_filter
from tests.conftest import load_expected

TINY = GLMConfig(hidden_size=32, num_layers=2, num_attention_heads=4, kv_channels=8, multi_query_group_num=2,
                 ffn_hidden_size=48, padded_vocab_size=96, seq_length=64, torch_dtype="float32",
                 eos_token_id=(93, 94, 95), pad_token_id=93)
GREEDY = SamplingParams(temperature=0)

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = GLM(TINY).eval()
    model.init_weights(0.2)  # large enough that logits are far from uniform
    return model


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)[None])[0]


def test_cached_prefill_and_decode_equal_full_forward(tiny):
    ids = torch.randint(0, 96, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    gen = Generator(tiny, max_batch=2, max_seq=32)
    want = full_logits(tiny, ids)
    assert torch.allclose(gen.prefill(ids[:9], slot=1), want[8], atol=1e-5)
    for t in range(9, 20):
        assert torch.allclose(gen.decode_step([ids[t]], [1])[0], want[t], atol=1e-5)
    assert gen.held[1] == ids and gen.held[0] == []
    # a long chunk (repeated-K/V path) after a reused prefix
    longer = ids + torch.randint(0, 96, (10,), generator=torch.Generator().manual_seed(9)).tolist()
    assert torch.allclose(gen.prefill(ids[:3], 0), want[2], atol=1e-5)
    assert torch.allclose(gen.prefill(longer, 0), full_logits(tiny, longer)[-1], atol=1e-5)


def test_static_shapes_decode_equals_dynamic(tiny):
    ids = list(range(30, 50))
    logits = []
    for static in (False, True):
        gen = Generator(tiny, 2, 32, static_shapes=static)
        gen.prefill(ids[:4], 0)
        gen.prefill(ids[:9], 1)
        logits.append(torch.stack([gen.decode_step([ids[4 + t], ids[9 + t]], [0, 1]) for t in range(8)]))
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


def test_reference_greedy_through_the_cache(reference_dir, device):
    lm = reference_dir / "lm"
    exp, arrays = load_expected(lm), load_np(str(lm / "expected" / "outputs.safetensors"))
    g = exp["greedy_generation"]
    model = load_lm(lm, device=device, dtype=torch.float32)
    gen = Generator(model, max_batch=1, max_seq=64)
    out = list(gen.generate(g["prompt_ids"], params=GREEDY, max_new_tokens=g["num_new_tokens"]))
    assert out == g["new_token_ids"]
    # step logits: re-run prefill + decode steps and compare every step with the official generate()
    want = torch.from_numpy(arrays[g["step_logits"].split(":", 1)[1]])
    gen.reset(0)
    steps = [gen.prefill(g["prompt_ids"])]
    for token in out[:-1]:
        steps.append(gen.decode_step([token], [0])[0])
    assert (torch.stack(steps).cpu() - want).abs().max().item() < 1e-4


def test_batched_slots_at_different_positions_equal_each_alone(tiny):
    rng = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 96, (n,), generator=rng).tolist() for n in (3, 11, 7)]
    alone = []
    for p in prompts:
        gen = Generator(tiny, 1, 40)
        alone.append(list(gen.generate(p, params=GREEDY, max_new_tokens=8)))
    for slots in ([3, 0, 2], [2, 0, 1]):  # a gathered subset of slots; the first three, permuted (cache views)
        gen = Generator(tiny, max_batch=4, max_seq=40)
        nxt = [int(gen.prefill(p, s).argmax()) for p, s in zip(prompts, slots, strict=True)]
        together = [[t] for t in nxt]
        for _ in range(7):
            logits = gen.decode_step(nxt, slots)
            nxt = logits.argmax(-1).tolist()
            for seq, t in zip(together, nxt, strict=True):
                seq.append(t)
        assert together == alone
        assert len({len(gen.held[s]) for s in slots}) == 3  # really at different positions
    with pytest.raises(ValueError, match="twice"):
        gen.decode_step([1, 2], [0, 0])


def test_kv_reuse_across_turns_computes_only_new_tokens(tiny, monkeypatch):
    gen = Generator(tiny, 1, 60)
    turn1 = list(range(10, 22))
    answer = list(gen.generate(turn1, params=GREEDY, max_new_tokens=6))
    turn2 = turn1 + answer + [40, 41, 42, 43]
    seen = []
    forward = tiny.forward
    monkeypatch.setattr(tiny, "forward", lambda ids, *a, **k: seen.append(ids.shape[1]) or forward(ids, *a, **k))
    logits = gen.prefill(turn2)
    # held: turn1 + answer[:-1] (the last answer id was sampled, never fed); new: answer[-1] + 4 ids
    assert seen == [5]
    assert torch.allclose(logits, full_logits(tiny, turn2)[-1], atol=1e-5)
    # a diverging history recomputes from the first difference
    seen.clear()
    gen.prefill(turn1[:4] + [1, 2, 3])
    assert seen == [3]


def test_generate_stops_on_stop_ids_and_limit(tiny):
    ids = list(range(5))
    free = list(generate(tiny, ids, params=GREEDY, max_new_tokens=12))
    assert len(free) == 12
    stopped = list(generate(tiny, ids, params=GREEDY, max_new_tokens=12, stop_ids=[free[3]]))
    assert stopped == free[: free.index(free[3]) + 1]


def test_context_and_token_errors(tiny):
    gen = Generator(tiny, 1, 16)
    with pytest.raises(ContextLengthError, match="exceeds"):
        gen.prefill(list(range(17)))
    with pytest.raises(ContextLengthError):
        Generator(tiny, 1, TINY.seq_length + 1)
    with pytest.raises(TokenError, match="vocabulary"):
        gen.prefill([1, 2, 96])
    with pytest.raises(TokenError, match="empty"):
        gen.prefill([])
    gen.prefill(list(range(16)))
    with pytest.raises(ContextLengthError, match="full"):
        gen.decode_step([1], [0])
    # generation ends (without error) when the context fills up
    assert len(list(Generator(tiny, 1, 16).generate(list(range(10)), params=GREEDY, max_new_tokens=50))) == 7


def test_kv_cache_shape_and_mask():
    torch.manual_seed(0)
    cache = KVCache(GLM(TINY), max_batch=3, max_seq=10)
    assert cache.k.shape == (2, 3, 2, 10, 8)
    m = cache.mask(torch.tensor([[2], [5]]), kv_len=6)
    assert m.shape == (2, 1, 1, 6) and m[0, 0, 0].tolist() == [True] * 3 + [False] * 3 and m[1].all()


# --- sampling -------------------------------------------------------------------------------------------
def test_top_k_and_top_p_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0, 2.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True, False]]  # tie kept
    assert torch.equal(top_k_filter(logits, 0), logits)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = ~torch.isinf(top_p_filter(probs.log(), 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.8
    assert (~torch.isinf(top_p_filter(probs.log(), 0.01))).tolist() == [[True, False, False, False]]


def test_sample_greedy_seeded_and_masked():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, GREEDY), logits.argmax(-1))
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=7)
    a = [sample(logits, p, torch.Generator().manual_seed(7)).tolist() for _ in range(2)]
    assert a[0] == a[1]
    draws = torch.stack([sample(logits, p) for _ in range(50)])
    assert len(set(draws[:, 0].tolist())) > 1  # really random without greedy
    allowed = torch.zeros(50, dtype=torch.bool)
    allowed[[3, 9]] = True
    assert set(torch.stack([sample(logits, p, None, allowed) for _ in range(50)]).flatten().tolist()) <= {3, 9}
    one = SamplingParams(temperature=0.7, top_k=1, top_p=1.0)
    assert torch.equal(sample(logits, one), logits.argmax(-1))


def test_sample_first_draws_again_only_outside_the_first_mask():
    torch.manual_seed(3)
    first = torch.ones(50, dtype=torch.bool)
    first[20:40] = False  # say, the speech codes
    logits = torch.randn(50)
    logits[25] = 9.0  # the free argmax is outside
    logits[7] = 8.0
    assert sample_first(logits, GREEDY) == 25 and sample_first(logits, GREEDY, first=first) == 7
    assert sample_first(logits, GREEDY, first=torch.ones(50, dtype=torch.bool)) == 25
    # seeded sampling: a first draw inside the mask is the plain draw with the same generator (official answers
    # that open with text are unchanged); a draw outside is replaced by one inside
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)
    flat = torch.zeros(50)
    kept = redrawn = 0
    for seed in range(60):
        plain = int(sample(flat[None], p, make_generator(seed))[0])
        got = sample_first(flat, p, make_generator(seed), first=first)
        if first[plain]:
            assert got == plain
            kept += 1
        else:
            assert first[got]
            redrawn += 1
    assert kept and redrawn
    allowed = torch.zeros(50, dtype=torch.bool)
    allowed[[3, 25, 30]] = True  # with a language lock too: inside both masks
    assert {sample_first(flat, p, make_generator(s), allowed, first) for s in range(20)} == {3}


def test_generator_first_mask_binds_the_first_id_only(tiny):
    ids = list(range(5))
    free = list(generate(tiny, ids, params=GREEDY, max_new_tokens=6))
    first = torch.ones(96, dtype=torch.bool)
    assert free == list(generate(tiny, ids, params=GREEDY, max_new_tokens=6, first=first))
    first[free[0]] = False
    bound = list(generate(tiny, ids, params=GREEDY, max_new_tokens=6, first=first))
    assert bound[0] != free[0] and first[bound[0]]
    first[:] = False
    first[bound[0]] = True  # later ids may be anything: the mask would forbid all but one
    out = list(generate(tiny, ids, params=GREEDY, max_new_tokens=6, first=first))
    assert out[0] == bound[0] and any(t != bound[0] for t in out[1:])


def test_grouped_attention_equals_repeated_kv_heads():
    from glm4voice.lm.model import grouped_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 6, 5, 8, generator=g), torch.randn(2, 3, 9, 8, generator=g), torch.randn(2, 3, 9, 8,
                                                                                                       generator=g)
    mask = torch.rand(2, 1, 5, 9, generator=g) > 0.4
    mask[..., 0] = True  # every query sees something
    want = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                            attn_mask=mask)
    assert torch.allclose(grouped_attention(q, k, v, mask), want, atol=1e-6)


def test_sampling_fast_path_has_the_official_distribution():
    """top-k then top-p on the k best (fast path) and on the whole vocabulary (with a tie: full path) must give
    the distribution of transformers' filters: softmax of the kept logits."""
    g = torch.Generator().manual_seed(5)
    base = torch.tensor([[3.0, 2.5, 2.2, 2.0, 1.0, 0.5, -1.0, 2.0]])  # a tie at the 4th value
    for k, tie in ((3, False), (4, True)):
        logits = base if tie else base[:, :-1]
        params = SamplingParams(temperature=0.7, top_k=k, top_p=0.9)
        kept = top_p_filter(top_k_filter(logits / 0.7, k), 0.9)
        want = kept.softmax(-1)[0]
        draws = torch.stack([sample(logits.expand(4000, -1), params, g)]).flatten()
        freq = torch.bincount(draws, minlength=logits.shape[-1]).float() / draws.numel()
        assert torch.allclose(freq, want, atol=0.03), (k, freq, want)
        assert set(draws.tolist()) == set(want.nonzero().flatten().tolist())
