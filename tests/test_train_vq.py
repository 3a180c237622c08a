import pytest
import torch

from glm4voice.train.vq import EMAVectorQuantizer, VQConfig


def _vq(k=4, d=2, **kw):
    q = EMAVectorQuantizer(VQConfig(codebook_size=k, dim=d, **kw))
    with torch.no_grad():
        q.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
        q.ema_weight.copy_(q.codebook.weight)
    return q.train()


def test_ema_update_matches_hand_computation():
    q = _vq(decay=0.9, epsilon=0.0)
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 1.0]]])
    _, ids, _, _ = q(h)
    assert ids.tolist() == [[0, 0, 1]]
    # counts n = [2, 1, 0, 0]; ema_count = 0.9 * 1 + 0.1 * n
    exp_count = torch.tensor([1.1, 1.0, 0.9, 0.9])
    assert torch.allclose(q.ema_count, exp_count)
    exp_w0 = 0.9 * torch.tensor([0.0, 0.0]) + 0.1 * torch.tensor([1.0, 1.0])
    assert torch.allclose(q.codebook.weight[0], exp_w0 / 1.1)
    exp_w1 = 0.9 * torch.tensor([10.0, 0.0]) + 0.1 * torch.tensor([9.0, 1.0])
    assert torch.allclose(q.codebook.weight[1], exp_w1 / 1.0)


def test_masked_positions_do_not_update_codebook_or_loss():
    q = _vq()
    h = torch.tensor([[[1.0, 0.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, False]])
    _, _, loss, _ = q(h, mask)
    assert torch.allclose(q.ema_count[3], torch.tensor(0.99), atol=1e-4)  # code 3 never assigned
    assert loss.item() == 10.0 * 0.25 * (1.0**2) / 2  # only the valid position: mse over D=2


def test_straight_through_gradient_and_no_codebook_grad():
    q = _vq()
    h = torch.randn(1, 5, 2, requires_grad=True)
    out, _, loss, _ = q(h)
    (out.sum() + loss).backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    assert q.codebook.weight.grad is None


def test_dead_codes_restart_to_hidden_states():
    q = _vq(restart_interval=4, decay=0.5)
    h = torch.tensor([[[0.1, 0.1], [0.2, 0.0], [0.0, 0.3]]])
    for _ in range(7):
        q(h)
    # never-used codes decay towards 0 (Laplace smoothing keeps them a hair above decay**n at step 4)
    assert int(q.updates) == 7 and (q.ema_count[1:] < 0.5**6).all()
    q(h)  # 8th update: a restart step; codes 1..3 are below 0.5**4 and restart
    for k in (1, 2, 3):
        assert q.ema_count[k] == 1.0
        assert any(torch.allclose(q.codebook.weight[k], row) for row in h[0])
    assert q.ema_count[0] > 1.0  # the used code is kept


def test_restart_keeps_live_codes():
    q = _vq(restart_interval=100)
    q.ema_count.copy_(torch.tensor([5.0, 0.01, 2.0, 0.01]))
    before = q.codebook.weight.clone()
    n = q.restart_dead_codes(torch.tensor([[7.0, 7.0]]))
    assert n == 2
    assert torch.equal(q.codebook.weight[[0, 2]], before[[0, 2]])
    assert torch.equal(q.codebook.weight[[1, 3]], torch.tensor([[7.0, 7.0], [7.0, 7.0]]))


def test_eval_mode_does_not_update():
    q = _vq().eval()
    before = q.codebook.weight.clone()
    q(torch.randn(1, 4, 2))
    assert torch.equal(before, q.codebook.weight)


def test_init_from_data_and_restart_threshold():
    from glm4voice.train.vq import EMAVectorQuantizer, VQConfig

    vq = EMAVectorQuantizer(VQConfig(codebook_size=8, dim=4, restart_threshold=0.5))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1)) * 100 + 50
    vq.init_from(x, generator=torch.Generator().manual_seed(0))
    # every code is a data row plus noise of 0.01 x std(x) per dimension (expected norm ~0.02 std for dim 4)
    d = torch.cdist(vq.codebook.weight, x).min(1).values
    assert (d < 0.1 * x.std()).all() and torch.equal(vq.ema_count, torch.ones(8))
    vq.ema_count[:4] = 0.4
    assert vq.restart_dead_codes(x) == 4  # below the configured threshold, not decay**interval


def test_kmeans_beats_its_random_start_and_reseeds_empty_clusters():
    from glm4voice.train.vq import EMAVectorQuantizer, VQConfig, kmeans

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(16, 8, generator=g) * 10
    x = centres[torch.randint(0, 16, (4000,), generator=g)] + torch.randn(4000, 8, generator=g)
    c, stats = kmeans(x, 16, iters=25, generator=torch.Generator().manual_seed(1))
    assert c.shape == (16, 8) and stats["mse"] < 0.5 * stats["mse_start"]
    # four distinct rows repeated, six clusters: starts that repeat a value leave clusters empty; re-seeding them at
    # the worst-served rows must still cover all four values (zero error)
    x = torch.tensor([[0.0, 0], [5, 0], [0, 5], [5, 5]]).repeat(10, 1)
    _, stats = kmeans(x, 6, iters=20, generator=torch.Generator().manual_seed(3))
    assert stats["mse"] == 0.0 and stats["reseeded"] > 0
    with pytest.raises(ValueError, match="non-empty"):
        kmeans(torch.zeros(0, 4), 4)
    vq = EMAVectorQuantizer(VQConfig(codebook_size=6, dim=2))
    got = vq.init_kmeans(x, iters=20, generator=torch.Generator().manual_seed(3))
    assert got["mse"] == 0.0 and torch.equal(vq.ema_count, torch.ones(6))
    assert torch.equal(vq.codebook.weight, vq.ema_weight)  # codebook = ema_weight / ema_count
