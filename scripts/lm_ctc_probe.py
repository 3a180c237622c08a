"""How much of the words of its input speech does an LM's block K hold? A linear CTC probe on frozen hidden states.

A CTC head over word pieces (``glm4voice.train.lm_ctc``) is trained on the output of block ``--layer`` of a frozen LM
at the positions of the training utterances' codes (ASR documents of the corpus, as ``train lm`` builds them), and
read on held-out utterances (held-out phrasings and voices): the piece error rate of its greedy path. The LM does not
change, so this compares LMs: e.g. one trained with ``--ctc-weight`` against the same steps without it, or the
blocks of one LM. Only blocks 1..K run (the probe never needs the rest).

    python3 scripts/lm_ctc_probe.py --corpus data/corpus_v6 --lm glm4voice/assets/embedded/lm --layer 3 \\
        --pieces runs/lm_ctc1/ctc_pieces.json --steps 1000
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--lm", default="glm4voice/assets/embedded/lm")
    p.add_argument("--tokens", default="tokens", help="the corpus's token subfolder")
    p.add_argument("--layer", type=int, default=3, help="the block (1-based) whose output the probe reads")
    p.add_argument("--pieces", required=True,
                   help="a word-piece vocabulary (ctc_pieces.json of a `train lm --ctc-weight` run), so probes of "
                        "several LMs share one")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8, help="packed rows per step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine to a tenth)")
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--eval-split", default="heldout", help="the corpus split read (train: how well the probe fits)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the curve and the final numbers here (json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from glm4voice.lm.model import packed_mask, rope
    from glm4voice.train import lm_ctc
    from glm4voice.train import lm_samples as ls
    from glm4voice.train import lm_trainer as lt
    from glm4voice.train.tokenizer_asr import read_pieces
    from glm4voice.train.tokenizer_trainer import sequence_error_rate

    tok, sp, lm = lt.load_frozen_lm(args.lm)
    piece_tok, pieces = read_pieces(args.pieces)

    def encode(text: str) -> list[int]:
        return piece_tok.encode(text.lower()).ids

    probe = lm_ctc.AudioCTC(lm, len(pieces), args.layer)  # validates the layer; only its head trains
    head, blank = probe.head, probe.blank

    def batches(split: str, seed: int, n: int | None = None):
        data = ls.load_lm_data(args.corpus, split=split, tokens=args.tokens, with_item_texts=False)
        if not data.utterances:
            raise SystemExit(f"{args.corpus}: no {split} utterances with {args.tokens}/ codes")
        mix = ls.Mixture(tok, sp, data, "asr=1", ctc_encode=encode)
        return lambda step: ls.pack_batch(mix.draw, seed=seed, step=step, rank=0, batch_size=args.batch,
                                          seq_len=args.seq_len, pad_id=sp.eot, fill_tries=4)

    train, held = batches("train", args.seed), batches(args.eval_split, 10_000 + args.seed)
    fixed = [held(i) for i in range(args.eval_batches)]

    @torch.no_grad()
    def hidden(b):
        x = lm.embed(b.input_ids)
        cos, sin = rope(b.position_ids, lm.cfg, lm.dtype)
        mask = packed_mask(b.doc_ids)
        for layer in lm.layers[:args.layer]:
            x = layer(x, cos, sin, mask)
        return x

    @torch.no_grad()
    def evaluate() -> dict:
        loss, refs, hyps = 0.0, [], []
        for b in fixed:
            logits = head(hidden(b))
            loss += float(lm_ctc.ctc_loss(logits, b.ctc, blank)) * len(b.ctc)
            refs += [list(t) for *_, t in b.ctc]
            hyps += lm_ctc.greedy_ctc(logits, b.ctc, blank)
        return {"ctc_loss": loss / max(len(refs), 1), "per": sequence_error_rate(refs, hyps), "utterances": len(refs)}

    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)
    curve = [{"step": 0, **evaluate()}]
    print(f"step 0: {args.eval_split} piece error {curve[-1]['per']:.3f}", file=sys.stderr)
    t0 = time.perf_counter()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        b = train(step)
        loss = lm_ctc.ctc_loss(head(hidden(b)), b.ctc, blank)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            curve.append({"step": step + 1, "train_ctc_loss": float(loss.detach()), **evaluate()})
            print(f"step {step + 1}: {args.eval_split} piece error {curve[-1]['per']:.3f}, CTC loss "
                  f"{curve[-1]['ctc_loss']:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    b = fixed[0]
    examples = []
    for (_, _, _, ref), hyp in list(zip(b.ctc, lm_ctc.greedy_ctc(head(hidden(b)), b.ctc, blank), strict=True))[:4]:
        text = [b"".join(pieces[i] for i in ids).decode("utf-8", "replace") for ids in (ref, hyp)]
        examples.append({"reference": text[0], "probe": text[1]})
    result = {"lm": args.lm, "layer": args.layer, "steps": args.steps, "final": curve[-1], "curve": curve,
              "examples": examples}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
    print(json.dumps({"lm": args.lm, "layer": args.layer, **curve[-1]}))
    return result


if __name__ == "__main__":
    random.seed(0)
    main()
