import torch

from glm4voice.train.asr_head import ASRHead, ASRHeadConfig


def test_asr_head_overfits_two_transcripts():
    torch.manual_seed(0)
    cfg = ASRHeadConfig(vocab_size=12, dim=32, layers=1, heads=2, max_len=16, bos_id=0, eos_id=1)
    head = ASRHead(cfg, memory_dim=8)
    memory = torch.randn(2, 5, 8)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    targets = [[3, 4, 5, 6], [7, 8, 2]]
    opt = torch.optim.Adam(head.parameters(), 3e-3)
    first = None
    for _ in range(150):
        loss = head.loss(memory, valid, targets)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    assert head.greedy(memory, valid) == targets


def test_padded_memory_positions_are_ignored():
    torch.manual_seed(0)
    head = ASRHead(ASRHeadConfig(vocab_size=10, dim=16, layers=1, heads=2, max_len=8), memory_dim=16).eval()
    mem = torch.randn(1, 6, 16)
    valid = torch.tensor([[True, True, True, False, False, False]])
    tokens = torch.tensor([[0, 4, 5]])
    a = head(tokens, mem, valid)
    mem2 = mem.clone()
    mem2[:, 3:] = 100.0
    assert torch.allclose(a, head(tokens, mem2, valid), atol=1e-5)
