"""How much of a GLM forward on a GPU is kernel-launch overhead: the same forward run eagerly and replayed as a
CUDA graph (which launches all its kernels at once).

    python benchmarks/lm_overhead.py --device cuda [--layers 40] [--tokens 1,129] [--batch 1]

Random weights at the release's width (``--layers`` deep, bf16). For each sequence length it times the forward
without a KV cache (static shapes, so it can be captured) eagerly and as a graph replay; eager / graph is the
speed-up a captured decode step could reach. A large ratio at 1 token means decoding is bound by launches, not by
the GPU (benchmarks/lm.py reports decode at ~13 % of the memory-bandwidth bound on an H200). CUDA only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from glm4voice.lm.config import GLMConfig
from glm4voice.lm.model import GLM


def timed(fn, repeats: int) -> float:
    """Median seconds per call (each call synchronised)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--tokens", default="1,129", help="sequence lengths of the timed forward")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        raise SystemExit("CUDA graphs need a CUDA device (--device cuda)")
    cfg = GLMConfig(seq_length=8192, num_layers=args.layers)
    torch.manual_seed(0)
    with device:
        model = GLM(cfg).to(torch.bfloat16).eval()
    model.init_weights(0.02)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; GLM {cfg.num_layers} layers, "
          f"hidden {cfg.hidden_size}, bf16, batch {args.batch}")
    print("| tokens | eager ms | graph ms | eager / graph | max abs diff |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(t) for t in args.tokens.split(",")):
        x = torch.randint(0, cfg.padded_vocab_size, (args.batch, n), device=device)
        with torch.inference_mode():
            eager_out = model(x, last_only=True)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm-up on a side stream before capture (CUDA graph rules)
                for _ in range(3):
                    model(x, last_only=True)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                graph_out = model(x, last_only=True)
            graph.replay()
            diff = (graph_out.float() - eager_out.float()).abs().max().item()
            eager = timed(lambda x=x: model(x, last_only=True), args.repeats)
            replay = timed(graph.replay, args.repeats)
        print(f"| {n} | {eager * 1e3:.1f} | {replay * 1e3:.1f} | {eager / replay:.1f}x | {diff:.3g} |")
        del graph


if __name__ == "__main__":
    main()
