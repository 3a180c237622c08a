"""Build training data: synthesize the speech corpus, train the text BPE, report corpus statistics.

    glm4voice data synth --out data/corpus_v1 --seed 0 --jobs 2
    glm4voice data bpe --out data/bpe_v1 --vocab-size 4000 --codebook-size 1024
    glm4voice data stats data/corpus_v1 --check
    glm4voice data tokens data/corpus_v1 --tokenizer PATH   (cache speech tokens with a trained speech tokenizer)
    glm4voice data variety --out data/variety_v1 --per-voice 1500   (other languages' natural voices, tokenizer)
    glm4voice data reading --corpus data/corpus_v6 --out data/reading_v1   (new sentences read aloud, LM ASR/TTS)
"""

from __future__ import annotations

import argparse
import json
import sys

from glm4voice.train.texts import AUGMENT_SETS


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("synth", help="synthesize (or resume) a speech corpus")
    p.add_argument("--out", required=True, help="corpus folder (resumes if it exists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num", type=int, default=None, help="number of text items to voice (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--question-voices", type=int, default=1, help="training voices per question")
    p.add_argument("--heldout-voice-fraction", type=float, default=0.1,
                   help="share of items also spoken by a held-out voice (those rows are split=heldout)")
    p.add_argument("--spoken-rephrasings", type=int, default=0,
                   help="also speak this many other training phrasings of each training question (one voice each)")
    p.add_argument("--extra-voices", type=int, default=0,
                   help="also speak each training question by this many more voices (voices.EXTRA_VOICES_2)")
    p.add_argument("--augment-set", type=int, choices=AUGMENT_SETS, default=1,
                   help="augmentation phrasings the spoken rephrasings draw from: 1; 1 and 2 (more phrasings); "
                        "1 to 3 (more again, with filler words around the request); 4 (set 3, and English "
                        "phrasings sometimes with a stray word of another kind between their words); 5 (set 4, "
                        "and Mandarin phrasings with stray characters too); or 6 (set 5 with more Mandarin "
                        "phrasings)")
    p.add_argument("--rephrasings-set3", type=int, default=0,
                   help="also speak this many phrasings of each training question drawn from augmentation set 3 "
                        "(new phrasings, fillers around the request), rows <item>.p<k>; a corpus made without "
                        "them can be completed in place from a cp -al copy (new corpus.json)")
    p.add_argument("--rephrasings-set4", type=int, default=0,
                   help="also speak this many phrasings of each English training question drawn from augmentation "
                        "set 4 (set 3's, about a third with stray words of other kinds between their words), rows "
                        "<item>.n<k>; completes a cp -al copy of an older corpus in place like --rephrasings-set3")
    p.add_argument("--rephrasings-set6", type=int, default=0,
                   help="also speak this many phrasings of each Mandarin training question drawn from augmentation "
                        "set 6 (set 5 with more Mandarin phrasings), rows <item>.m<k>; completes a cp -al copy of an "
                        "older corpus in place like --rephrasings-set3")
    p.add_argument("--languages", default="en,zh", help="comma-separated: en,zh")
    p.add_argument("--kinds", default=None, help="comma-separated item kinds (default: all)")
    p.add_argument("--no-answers", action="store_true", help="do not speak answers in the target voice")
    p.add_argument("--no-questions", action="store_true",
                   help="do not speak the questions (with --target-voice-phrasings/-texts: a corpus for the speech "
                        "decoder)")
    p.add_argument("--target-voice-phrasings", type=int, default=0,
                   help="also speak each training question and up to this many - 1 other training phrasings of it "
                        "plainly in the target voice, 22.05 kHz too (role 'speech': more audio for the decoder)")
    p.add_argument("--target-voice-texts", type=int, default=0,
                   help="also speak up to this many English sentences no item says (WordNet definitions of other "
                        "words, fortunes) plainly in the target voice (role 'speech', rows extra-en-N)")
    p.add_argument("--retry-failed", action="store_true", help="retry utterances recorded as unspeakable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("bpe", help="train the text BPE and save it in the GLM-4 tokenizer format")
    p.add_argument("--out", required=True, help="folder for tokenizer.model and tokenizer_config.json")
    p.add_argument("--vocab-size", type=int, default=4000, help="BPE ranks (256 bytes + merges)")
    p.add_argument("--codebook-size", type=int, required=True, help="speech-token codebook size K (<|audio_0..K-1|>)")
    p.add_argument("--items", default=None, help="items.jsonl of a corpus (default: build the items from --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-frequency", type=int, default=2)

    p = sub.add_parser("stats", help="corpus statistics (and a file check with --check)")
    p.add_argument("corpus", help="corpus folder")
    p.add_argument("--check", action="store_true", help="open every audio file and report bad rows")

    p = sub.add_parser("variety", help="natural voices of other languages reading their language: speaker "
                                       "variety for the tokenizer (train tokenizer --extra-corpus)")
    p.add_argument("--out", required=True, help="corpus folder (resumes if it exists)")
    p.add_argument("--per-voice", type=int, default=1500, help="sentences each voice reads")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("reading", help="the corpus's training voices reading sentences it never says: ASR/TTS "
                                       "data for the LM (train lm --extra-corpus)")
    p.add_argument("--corpus", required=True, help="the dialogue corpus (its training voices; its sentences are "
                                                   "left out)")
    p.add_argument("--out", required=True, help="corpus folder (resumes if it exists)")
    p.add_argument("--en", type=int, default=12000, help="English sentences (WordNet examples, unused fortunes)")
    p.add_argument("--zh", type=int, default=8000, help="Mandarin clauses (unused fortunes-zh)")
    p.add_argument("--heldout-en", type=int, default=0,
                   help="English sentences read by the corpus's held-out voices (split heldout, to measure)")
    p.add_argument("--heldout-zh", type=int, default=0, help="the same for Mandarin")
    p.add_argument("--source", default="examples", choices=["examples", "glosses"],
                   help="examples: WordNet example sentences, unused fortunes and fortunes-zh clauses; glosses: "
                        "WordNet definitions (English only: pass --zh 0; row ids read-en-g...)")
    p.add_argument("--voices", default="train", choices=["train", "target"],
                   help="train: the corpus's training voices read (held-out rows: its held-out voices); target: its "
                        "answer voice of each language reads every row (text-to-speech data in the voice the LM "
                        "speaks: train lm --extra-corpus DIR:tts; row ids read-en-t...)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("augment", help="speaker-perturbed copies of a corpus's spoken training questions (pitch, "
                                       "tempo, spectral tilt with sox): more voices for the LM (train lm "
                                       "--extra-corpus, after data tokens)")
    p.add_argument("--corpus", required=True, help="the source corpus")
    p.add_argument("--out", required=True, help="new corpus folder (resumes if it exists)")
    p.add_argument("--rows", type=int, default=None, help="a seeded sample of this many questions (default: all)")
    p.add_argument("--copies", type=int, default=1, help="perturbed copies of each question")
    p.add_argument("--pitch", type=float, default=4.0, help="pitch and formant shift, up to +-x semitones")
    p.add_argument("--min-pitch", type=float, default=1.0, help="at least this many semitones up or down")
    p.add_argument("--tempo", type=float, default=0.1, help="tempo factor in [1-x, 1+x]")
    p.add_argument("--tilt", type=float, default=6.0, help="spectral slope up to +-x dB (bass and treble shelves)")
    p.add_argument("--languages", default=None, help="comma-separated: only questions in these languages")
    p.add_argument("--jobs", type=int, default=1, help="sox processes at a time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("tokens", help="cache speech tokens per utterance (tokens/<id>.npy)")
    p.add_argument("corpus", help="corpus folder")
    p.add_argument("--tokenizer", default=None, help="speech tokenizer folder or hub id (default: the embedded one)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None,
                   help="token folder (default: CORPUS/tokens); a folder is stamped with its tokenizer "
                        "(TOKENIZER.json) and codes of another tokenizer are refused")
    p.add_argument("--limit", type=int, default=None, help="encode a seeded sample of this many rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="re-encode rows already cached")
    p.add_argument("--manifest-order", action="store_true",
                   help="encode in manifest order (default: longest first, batches of similar length pad less)")


def run(args: argparse.Namespace) -> int:
    return {"synth": _synth, "bpe": _bpe, "stats": _stats, "tokens": _tokens,
            "variety": _variety, "reading": _reading, "augment": _augment}[args.data_command](args)


def _augment(args: argparse.Namespace) -> int:
    from glm4voice.train.augment import Ranges, build

    languages = tuple(x.strip() for x in args.languages.split(",") if x.strip()) if args.languages else None
    report = build(args.out, args.corpus, rows=args.rows, copies=args.copies, seed=args.seed, jobs=args.jobs,
                   ranges=Ranges(pitch=args.pitch, tempo=args.tempo, tilt=args.tilt, min_pitch=args.min_pitch),
                   languages=languages, progress=not args.quiet)
    print(json.dumps(report))
    return 0


def _variety(args: argparse.Namespace) -> int:
    from glm4voice.train.variety import build

    report = build(args.out, per_voice=args.per_voice, seed=args.seed, progress=not args.quiet, jobs=args.jobs)
    print(report.summary())
    return 0


def _reading(args: argparse.Namespace) -> int:
    from glm4voice.train.reading import build

    report = build(args.out, args.corpus, {"en": args.en, "zh": args.zh},
                   heldout={"en": args.heldout_en, "zh": args.heldout_zh}, seed=args.seed, jobs=args.jobs,
                   source=args.source, voice_set=args.voices,
                   progress=not args.quiet)
    print(report.summary())
    return 0


def _synth(args: argparse.Namespace) -> int:
    from glm4voice.train.corpus import CorpusConfig, synthesize_corpus

    cfg = CorpusConfig(seed=args.seed, num_items=args.num, question_voices=args.question_voices,
                       heldout_voice_fraction=args.heldout_voice_fraction, answers=not args.no_answers,
                       spoken_rephrasings=args.spoken_rephrasings, augment_set=args.augment_set,
                       rephrasings_set3=args.rephrasings_set3, rephrasings_set4=args.rephrasings_set4,
                       rephrasings_set6=args.rephrasings_set6,
                       extra_voices=args.extra_voices, questions=not args.no_questions,
                       target_voice_phrasings=args.target_voice_phrasings,
                       target_voice_texts=args.target_voice_texts,
                       languages=tuple(args.languages.split(",")),
                       kinds=tuple(args.kinds.split(",")) if args.kinds else None)
    report = synthesize_corpus(args.out, cfg, jobs=args.jobs, progress=not args.quiet, retry_failed=args.retry_failed)
    print(report.summary())
    if report.failed:
        print(f"skipped utterances are listed with their reason in {args.out}/failed.jsonl")
    return 0


def _bpe(args: argparse.Namespace) -> int:
    from glm4voice.train.bpe import build

    summary = build(args.out, vocab_size=args.vocab_size, codebook_size=args.codebook_size, items_path=args.items,
                    seed=args.seed, min_frequency=args.min_frequency)
    print(json.dumps(summary))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from glm4voice.train.corpus import corpus_stats, load_manifest

    stats = corpus_stats(args.corpus)
    if args.check:
        check = load_manifest(args.corpus, decode=True)
        for rid, reason in check.problems:
            print(f"bad row {rid}: {reason}", file=sys.stderr)
        stats["check"] = check.summary()
    print(json.dumps(stats, indent=1, ensure_ascii=False))
    return 1 if args.check and stats["check"] and check.problems else 0


def _tokens(args: argparse.Namespace) -> int:
    import torch

    from glm4voice.checkpoints import resolve
    from glm4voice.tokenizer import SpeechTokenizer  # built by the tokenizer component (docs/INTERFACES.md)
    from glm4voice.train.corpus import cache_tokens, tokenizer_fingerprint

    folder = resolve(args.tokenizer, "tokenizer")
    tok = SpeechTokenizer.from_pretrained(folder, device=args.device, dtype=torch.float32)

    def encode(wavs):
        return tok.encode([torch.from_numpy(w) for w in wavs])

    try:
        counts = cache_tokens(args.corpus, encode, batch_size=args.batch_size, tokens_dir=args.out,
                              limit=args.limit, seed=args.seed, overwrite=args.overwrite,
                              by_length=not args.manifest_order, source=tokenizer_fingerprint(folder))
    except ValueError as e:
        raise SystemExit(f"glm4voice data tokens: error: {e}") from None
    print(json.dumps(counts))
    return 0
