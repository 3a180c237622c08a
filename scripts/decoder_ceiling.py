"""Where is the answers' intelligibility lost? The judge on one set of corpus answers four ways (a diagnostic).

    python3 scripts/decoder_ceiling.py --corpus data/corpus_v6 [--decoder embedded DIR ...] [--n 40] [--flow-steps 4]
        [--decoders-only] [--flow-temperature 1 0.8 ...] [--tokens NAME] [--encode-with cached|TOKENIZER ...]

For ``--n`` English answers of the corpus's held-out split (the answer voice; same rows for every decoder):
1. the corpus's own TTS audio (the judge's floor on these texts: names like "Bishkek"),
2. HiFT on the mel of that audio (copy synthesis: the vocoder alone),
3. each ``--decoder`` on the answer's reference speech codes (flow + vocoder: what the best possible LM would get):
   the corpus's cached codes (``--tokens``, which also picks the rows: those with codes), or, per decoder
   (``--encode-with``, one entry per decoder), the answer's 16 kHz audio encoded by that decoder's tokenizer (a
   decoder carried onto another tokenizer's codes is judged on the same rows as the one it came from),
and prints the judge's word error rate of each against the answer text. An LM's judged intelligibility
(``glm4voice eval spoken_qa``) cannot beat line 3 of the decoder it speaks through.

Session 14 (embedded v9 decoder, 40 answers): TTS audio 0.091, copy synthesis 0.088, flow + HiFT 0.236 (10 flow
steps 0.242; CFG rate 0 / 1.5: 0.261 / 0.223): the vocoder is not the limit; the flow, given these codes, is.
Session 15 (--n 120): TTS 0.066, copy synthesis 0.095, v9's flow 0.216, that flow + 3,000 steps (v10) 0.164.
Session 16 (--n 120 --threads 1): TTS 0.066, copy synthesis 0.094 (v10's HiFT) / 0.091 (v11's), v10 0.160, v11
(flow and HiFT trained on 3.6x more answer-voice audio) 0.134.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def main() -> None:
    import soundfile as sf
    import torch

    from glm4voice.checkpoints import resolve
    from glm4voice.decoder import SpeechDecoder
    from glm4voice.decoder.model import new_generator
    from glm4voice.eval.judge import load_judge
    from glm4voice.eval.metrics import corpus_error_rate
    from glm4voice.train import lm_samples as ls
    from glm4voice.train.decoder_data import decoder_mel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="corpus with audio22k/ and cached speech tokens")
    p.add_argument("--decoder", nargs="+", default=["embedded"], help="decoder folders ('embedded' for the shipped)")
    p.add_argument("--n", type=int, default=40, help="English held-out answers")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--flow-steps", type=int, default=None, help="override the decoders' Euler steps")
    p.add_argument("--flow-temperature", type=float, nargs="+", default=[None],
                   help="scale(s) of the flow's initial noise; each decoder is judged at each (default: its config)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--judge", default="auto")
    p.add_argument("--tokens", default="tokens", help="the corpus's cached-codes subfolder (picks the rows too)")
    p.add_argument("--encode-with", nargs="+", default=None,
                   help="per --decoder: 'cached' (the --tokens codes) or a tokenizer folder that encodes the "
                        "answer audio for that decoder")
    p.add_argument("--decoders-only", action="store_true",
                   help="skip lines 1-2 (TTS audio, copy synthesis): decoders only (5 min less at --n 120)")
    args = p.parse_args()
    encode_with = args.encode_with or ["cached"] * len(args.decoder)
    if len(encode_with) != len(args.decoder):
        raise SystemExit(f"--encode-with has {len(encode_with)} entries for {len(args.decoder)} decoders")
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = Path(args.corpus)
    held = ls.load_lm_data(str(corpus), split="heldout", tokens=args.tokens)
    english = [d for d in held.dialogues if d.answer.language == "en"]
    rows = random.Random(args.seed).sample(english, min(args.n, len(english)))
    paths = {}
    with (corpus / "manifest.jsonl").open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            paths[r["id"]] = r["path"]
    judge = load_judge(args.judge, threads=args.threads or 2)
    refs = [d.answer.text for d in rows]

    def wer(hyps: list[str]) -> float:
        return round(corpus_error_rate(refs, hyps, ["en"] * len(refs)), 3)

    def report(what: str, hyps: list[str], t0: float) -> None:
        print(json.dumps({"what": what, "answers": len(refs), "judge_wer": wer(hyps),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)

    audio22 = [sf.read(str(corpus / paths[d.answer.id].replace("audio16k", "audio22k")), dtype="float32")
               for d in rows]
    if any(sr != 22050 for _, sr in audio22):
        raise SystemExit("expected the corpus's audio22k/ answers at 22,050 Hz")
    if not args.decoders_only:
        t0 = time.perf_counter()
        report("corpus TTS audio", [judge.transcribe(w, sr, "en").text for w, sr in audio22], t0)
        first = SpeechDecoder.from_pretrained(resolve(args.decoder[0], "decoder", allow_download=False))
        t0 = time.perf_counter()
        hyps = []
        with torch.inference_mode():
            for w, _ in audio22:
                speech, _ = first.vocode(decoder_mel(torch.from_numpy(w))[None], new_generator())
                hyps.append(judge.transcribe(speech[0].numpy(), first.sample_rate, "en").text)
        report(f"HiFT copy synthesis ({args.decoder[0]})", hyps, t0)
    for spec, source in zip(args.decoder, encode_with, strict=True):
        dec = SpeechDecoder.from_pretrained(resolve(spec, "decoder", allow_download=False),
                                            flow_steps=args.flow_steps)
        if source == "cached":
            codes = [d.answer.codes.tolist() for d in rows]
        else:
            from glm4voice.tokenizer import SpeechTokenizer

            tok = SpeechTokenizer.from_pretrained(resolve(source, "tokenizer", allow_download=False))
            codes = tok.encode([str(corpus / paths[d.answer.id]) for d in rows])
            spec = f"{spec}, codes of {source}"
        for temperature in args.flow_temperature:
            if temperature is not None:
                dec.set_flow_temperature(temperature)
            t0 = time.perf_counter()
            hyps = [judge.transcribe(dec.decode(c).numpy(), dec.sample_rate, "en").text for c in codes]
            report(f"flow + HiFT on the reference codes ({spec}, temperature {dec.cfg.flow.cfm.temperature:g})",
                   hyps, t0)


if __name__ == "__main__":
    main()
