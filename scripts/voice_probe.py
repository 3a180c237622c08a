"""Which voices does a tokenizer hear? Phoneme error per voice of a corpus's held-out rows (a diagnostic, not a test)

    python3 scripts/voice_probe.py RUN --corpus data/corpus_v6 [--encoder TOKENIZER_DIR] [--n 1500] [--pitch -3 3]

RUN is a `glm4voice train tokenizer --phone-weight ...` run folder: its last.pt holds the phoneme head (a training
aid that exports leave out) and phones.json its inventory. ``--encoder`` swaps in the encoder of another tokenizer
folder with the same codebook (e.g. a `train tokenizer-adapt` export), so an adapted encoder is read by the same
head. The phoneme error is measured through the codes (quantised). Held-out rows are held-out phrasings of training
voices plus everything the held-out voices say. ``--pitch`` also scores the training voices' rows with every
frequency shifted by that many semitones at the same tempo (``tokenizer_adapt.shifted_features``): how much a
different-sounding speaker costs.

``--refit kmeans|batch`` fits the codebook again before scoring through it, as the end of a VQ warm-up would (a run
still in its warm-up: what switching the quantiser on costs, before any training with it).

Session 12 (runs/tok_v4, corpus_v6, 1,500 rows): training voices 0.09-0.31 (the flite/festival ones 0.25-0.31),
held-out espeak voices 0.09-0.18, flite awb and festival ked_diphone 0.52.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch


def main() -> None:
    from glm4voice.train import phonemes
    from glm4voice.train import tokenizer_trainer as tt
    from glm4voice.train.voices import HELDOUT_VOICE_NAMES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a tokenizer trainer run folder with a phoneme head (last.pt, spec.json, phones.json)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--encoder", default=None, help="a tokenizer folder whose encoder replaces the run's")
    ap.add_argument("--n", type=int, default=1500, help="held-out rows sampled")
    ap.add_argument("--pitch", type=float, nargs="*", default=[], help="semitone shifts for the training voices")
    ap.add_argument("--unquantized", action="store_true",
                    help="read the states before the quantiser (a run still in its VQ warm-up)")
    ap.add_argument("--refit", choices=["kmeans", "batch"], default=None,
                    help="before scoring through the quantiser, fit the codebook again to training states as the "
                         "end of the VQ warm-up would: k-means over --refit-frames positions (train tokenizer "
                         "--vq-init-frames) or one batch of 24 utterances (the default switch)")
    ap.add_argument("--refit-frames", type=int, default=50_000)
    ap.add_argument("--refit-codes", type=int, default=None,
                    help="with --refit kmeans: a codebook of this many codes instead of the run's (what a larger "
                         "codebook would cost at the switch)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    spec = json.loads((run / "spec.json").read_text())
    if args.refit_codes is not None:
        if args.refit != "kmeans":
            raise SystemExit("--refit-codes needs --refit kmeans: a codebook of another size must be fitted")
        if args.encoder:
            raise SystemExit("--refit-codes fits a new codebook, and --encoder needs the run's own (its codes must "
                             "mean the same)")
        spec["codebook"] = args.refit_codes
    model = tt.TokenizerTrainModel(tt.TokenizerTrainSpec(**spec))
    if model.phone is None:
        raise SystemExit(f"{run} has no phoneme head (trained without --phone-weight)")
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    weights = state["model"]
    if args.refit_codes is not None:  # the codebook tensors are refitted below; every other weight must load
        sized = {k for k, v in model.state_dict().items() if k in weights and v.shape != weights[k].shape}
        weights = {k: v for k, v in weights.items() if k not in sized}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if set(missing) != sized or unexpected:
            raise SystemExit(f"{run}: weights do not fit a {args.refit_codes}-code model: missing "
                             f"{sorted(set(missing) - sized)}, unexpected {unexpected}")
    else:
        model.load_state_dict(weights)
    if args.encoder:
        other = tt.load_for_asr(args.encoder)
        if not torch.equal(other.encoder.codebook.weight.float(), model.vq.codebook.weight.float()):
            raise SystemExit(f"{args.encoder} has another codebook than {run}: its codes mean something else")
        model.encoder.load_state_dict(other.encoder.state_dict())
    # through the quantiser unless asked (make_eval quantises once the warm-up has passed)
    model.steps_seen.fill_(0 if args.unquantized else max(int(model.steps_seen), model.spec.vq_warmup))
    model.eval()
    if args.refit:
        if args.unquantized:
            raise SystemExit("--refit scores through the quantiser: leave out --unquantized")
        train = tt.load_corpus(args.corpus, split="train", max_seconds=10, limit=max(24, args.refit_frames // 40),
                               seed=4)
        if args.refit == "kmeans":
            states = tt.codebook_states(train, args.refit_frames, seed=4)(model)
            fit = model.vq.init_kmeans(states, generator=torch.Generator().manual_seed(0))
            print(f"codebook refitted by k-means over {states.shape[0]} states: squared error per dim "
                  f"{fit['mse_start']:.4f} (random rows) -> {fit['mse']:.4f}")
        else:
            states = tt.codebook_states(train[:24], 10**9, batch_size=24, seed=4)(model)
            model.vq.init_from(states, generator=torch.Generator().manual_seed(0))
            print(f"codebook refitted from one batch of 24 utterances ({states.shape[0]} states)")
    utts = tt.load_corpus(args.corpus, split="heldout", max_seconds=10, limit=args.n, seed=3)
    index = {s: i for i, s in enumerate(json.loads((run / "phones.json").read_text(encoding="utf-8")))}
    table = phonemes.cached_phonemes(args.corpus, [(u.language, u.text) for u in utts], jobs=1)
    for u in utts:
        u.phones = phonemes.encode(table[(u.language, u.text)], index)
    by_voice = collections.defaultdict(list)
    for u in utts:
        by_voice[u.voice].append(u)

    def score(us, features=None) -> float:
        with torch.no_grad():
            return tt.make_eval(us, features=features)(model)["phone_error"]

    print(f"{run} step {int(state['step'])}" + (f", encoder of {args.encoder}" if args.encoder else "")
          + (", unquantized" if args.unquantized else "") + (f", codebook refit: {args.refit}" if args.refit else ""))
    shifts = "".join(f" {s:+g} st |" for s in args.pitch)
    print(f"\n| voice | held out | rows | phoneme error |{shifts}\n|---|---|---|---|" + "---|" * len(args.pitch))
    for voice, us in sorted(by_voice.items(), key=lambda kv: (kv[0] in HELDOUT_VOICE_NAMES, kv[0])):
        held = voice in HELDOUT_VOICE_NAMES
        row = f"| {voice} | {'yes' if held else ''} | {len(us)} | {score(us):.3f} |"
        for s in args.pitch:
            if held:
                row += " |"
                continue

            def shifted(pcms, s=s):
                feats, mask = tt.featurize(pcms)
                for b, p in enumerate(pcms):
                    n = int(mask[b].sum())
                    feats[b, :, :n] = tt.shifted_features(p, s, n)
                return feats, mask

            row += f" {score(us, shifted):.3f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
