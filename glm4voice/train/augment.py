"""Speaker-perturbed copies of a corpus's spoken questions (`glm4voice data augment`): more voices for the LM.

Why: the LM answers a held-out espeak voice's questions less often than a training voice's (session 28: en-us+m6
47 %, en-gb-x-rp+f3 30 % of the 1,000 corpus questions; the training voices 48 % in all, their English espeak
voices 33-74 %), although the tokenizer
hears those voices as well as the training ones (phoneme error 0.09 and 0.16, session 12). A new voice gives new
code sequences for the same words, and the LM has learned the codes of about twenty voices. A copy of a training
question whose pitch, formants, tempo and spectral slope are moved (sox ``pitch``, ``tempo``, ``bass``/``treble``)
is another speaker to the tokenizer, so its codes are new sequences for words the LM knows.

The output is an ordinary corpus folder (``manifest.jsonl``, ``audio16k/``, ``items.jsonl``): ``glm4voice data
tokens OUT`` codes it and ``glm4voice train lm --extra-corpus OUT`` adds its dialogues to the SFT pool (and its
utterances to the pools of ``--extra-kinds``). Each copy's row says what was done (``augment``: source id, pitch in
semitones, tempo factor, tilt in dB); its id is the source id plus ``.augK``. The answers of the chosen items are
carried over unchanged (same ids; audio and cached codes hard-linked when the file system allows, with the source
token folder's tokenizer stamp), so the dialogues resolve and only the copies need coding. The plan is
deterministic from the seed; a re-run skips the copies whose audio exists (resumable), and a failed copy is
recorded in ``failed.jsonl``, not lost.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from glm4voice.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Perturb:
    pitch: float  # semitones (formants and F0 move together, tempo kept)
    tempo: float  # duration factor 1 / tempo (tempo > 1: faster)
    tilt: float  # dB: bass cut and treble boost by tilt / 2 each (negative: darker)

    def sox_effects(self) -> list[str]:
        out = ["pitch", f"{100 * self.pitch:.0f}", "tempo", "-s", f"{self.tempo:.4f}"]
        if self.tilt:
            out += ["bass", f"{-self.tilt / 2:.2f}", "treble", f"{self.tilt / 2:.2f}"]
        return out + ["rate", "16000"]


@dataclass(frozen=True)
class Ranges:
    pitch: float = 4.0
    tempo: float = 0.1
    tilt: float = 6.0
    min_pitch: float = 1.0  # |pitch| at least this: a copy must move

    def __post_init__(self):
        if self.pitch < 0 or not 0 <= self.tempo < 0.5 or self.tilt < 0 or not 0 <= self.min_pitch <= self.pitch:
            raise ConfigError(f"augment ranges: need pitch >= min_pitch >= 0, 0 <= tempo < 0.5, tilt >= 0; got "
                              f"pitch {self.pitch}, min_pitch {self.min_pitch}, tempo {self.tempo}, tilt {self.tilt}")

    def draw(self, rng: random.Random) -> Perturb:
        size = rng.uniform(self.min_pitch, self.pitch) if self.pitch else 0.0
        return Perturb(pitch=round(size * rng.choice((-1, 1)), 2),
                       tempo=round(rng.uniform(1 - self.tempo, 1 + self.tempo), 3),
                       tilt=round(rng.uniform(-self.tilt, self.tilt), 1))


def manifest_rows(corpus_dir: str | os.PathLike) -> list[dict]:
    """The parsable rows of a corpus's manifest (its audio is not opened)."""
    from glm4voice.train.corpus import MANIFEST, read_jsonl

    manifest = os.path.join(corpus_dir, MANIFEST)
    if not os.path.isfile(manifest):
        raise ConfigError(f"{corpus_dir}: no {MANIFEST} (not a corpus folder)")
    return read_jsonl(manifest)[0]


def plan(corpus_dir: str | os.PathLike, *, rows: int | None, copies: int = 1, seed: int = 0,
         ranges: Ranges = Ranges(), roles: tuple[str, ...] = ("question",), split: str = "train",
         languages: tuple[str, ...] | None = None, manifest: list[dict] | None = None) -> list[tuple[dict, dict]]:
    """(source row, copy row) pairs: a seeded sample of ``rows`` of the corpus's ``roles`` rows of ``split`` (all
    when None), ``copies`` perturbed copies of each. ``manifest``: the corpus's rows when already read."""
    if copies < 1 or (rows is not None and rows < 1):
        raise ConfigError(f"need copies >= 1 and rows >= 1, got copies {copies}, rows {rows}")
    src = [r for r in (manifest_rows(corpus_dir) if manifest is None else manifest)
           if r.get("role") in roles and r.get("split") == split and "path" in r and "id" in r
           and (languages is None or r.get("language") in languages)]
    src.sort(key=lambda r: r["id"])
    rng = random.Random(seed)
    if rows is not None and rows < len(src):
        src = sorted(rng.sample(src, rows), key=lambda r: r["id"])
    out = []
    for r in src:
        for k in range(copies):
            p = ranges.draw(rng)
            new = dict(r, id=f"{r['id']}.aug{k}", voice=f"{r.get('voice', '')}~aug",
                       path=f"audio16k/{r.get('kind', 'misc')}/{r['id']}.aug{k}.flac",
                       duration=round(float(r.get("duration", 0.0)) / p.tempo, 4), sample_rate=16000,
                       augment={"source": r["id"], "pitch": p.pitch, "tempo": p.tempo, "tilt": p.tilt})
            new.pop("path_22k", None)
            out.append((r, new))
    return out


def _perturb_file(src: str, dst: str, p: Perturb) -> str | None:
    """sox SRC DST (16 kHz, 16-bit mono) with ``p``'s effects; None, or the reason it failed. ``-R -D`` (repeatable,
    no dither), as the TTS engines' sox styling: the same plan gives the same bytes."""
    from glm4voice.train.tts import TTSFailure, _run

    tmp = dst + ".part.flac"
    try:
        _run(["sox", "-q", "-R", "-D", src, "-r", "16000", "-b", "16", "-c", "1", tmp, *p.sox_effects()])
        if not os.path.exists(tmp) or os.path.getsize(tmp) == 0:
            raise TTSFailure("sox wrote no audio")
    except TTSFailure as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        return str(e)
    os.replace(tmp, dst)
    return None


def _link(src: str, dst: str) -> None:
    if os.path.exists(dst):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def build(out_dir: str | os.PathLike, corpus_dir: str | os.PathLike, *, rows: int | None, copies: int = 1,
          seed: int = 0, ranges: Ranges = Ranges(), jobs: int = 1, languages: tuple[str, ...] | None = None,
          progress: bool = True) -> dict:
    """Write the perturbed copies and the carried-over answers into ``out_dir``; returns counts."""
    from tqdm import tqdm

    from glm4voice.train.corpus import ITEMS, MANIFEST, TOKENS_STAMP

    if shutil.which("sox") is None:
        raise ConfigError("sox is not installed (apt-get install -y sox libsox-fmt-all)")
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    corpus_dir, out_dir = str(corpus_dir), str(out_dir)
    if os.path.abspath(corpus_dir) == os.path.abspath(out_dir):
        raise ConfigError("--out must be a new folder, not the source corpus")
    manifest = manifest_rows(corpus_dir)
    pairs = plan(corpus_dir, rows=rows, copies=copies, seed=seed, ranges=ranges, languages=languages,
                 manifest=manifest)
    os.makedirs(out_dir, exist_ok=True)
    todo = [(s, c) for s, c in pairs if not os.path.exists(os.path.join(out_dir, c["path"]))]
    for _, c in todo:
        os.makedirs(os.path.dirname(os.path.join(out_dir, c["path"])), exist_ok=True)

    def work(pair):
        s, c = pair
        a = c["augment"]
        return c["id"], _perturb_file(os.path.join(corpus_dir, s["path"]), os.path.join(out_dir, c["path"]),
                                      Perturb(a["pitch"], a["tempo"], a["tilt"]))

    failed: dict[str, str] = {}
    with ThreadPoolExecutor(jobs) as pool, tqdm(total=len(todo), desc="augment", unit="utt",
                                                 disable=not progress) as bar:
        for rid, reason in pool.map(work, todo):
            if reason:
                failed[rid] = reason
            bar.update()
    made = [c for _, c in pairs if c["id"] not in failed and os.path.exists(os.path.join(out_dir, c["path"]))]

    # the answers of the chosen items, unchanged: audio and codes linked, the token folder's stamp copied
    items = {c["item_id"] for c in made}
    answers = [dict(r) for r in manifest if r.get("role") == "answer" and r.get("item_id") in items and "path" in r]
    src_tokens, out_tokens = os.path.join(corpus_dir, "tokens"), os.path.join(out_dir, "tokens")
    linked = 0
    for r in answers:
        r.pop("path_22k", None)
        _link(os.path.join(corpus_dir, r["path"]), os.path.join(out_dir, r["path"]))
        tok = os.path.join(src_tokens, r["id"] + ".npy")
        if os.path.exists(tok) and os.path.exists(os.path.join(src_tokens, TOKENS_STAMP)):
            _link(tok, os.path.join(out_tokens, r["id"] + ".npy"))
            linked += 1
    if linked:
        shutil.copyfile(os.path.join(src_tokens, TOKENS_STAMP), os.path.join(out_tokens, TOKENS_STAMP))
    if os.path.exists(os.path.join(corpus_dir, ITEMS)):
        with open(os.path.join(corpus_dir, ITEMS), encoding="utf-8") as f, \
                open(os.path.join(out_dir, ITEMS), "w", encoding="utf-8") as g:
            g.writelines(line for line in f if line.strip() and json.loads(line).get("id") in items)
    tmp = os.path.join(out_dir, MANIFEST + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in made + answers:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, os.path.join(out_dir, MANIFEST))
    with open(os.path.join(out_dir, "failed.jsonl"), "w", encoding="utf-8") as f:
        for rid, reason in sorted(failed.items()):
            f.write(json.dumps({"id": rid, "reason": reason}, ensure_ascii=False) + "\n")
    hours = sum(float(c["duration"]) for c in made) / 3600
    report = {"copies": len(made), "made_now": len(todo) - len(failed), "failed": len(failed),
              "answers": len(answers), "answer_codes_linked": linked, "hours": round(hours, 2)}
    log.info("augment %s -> %s: %s", corpus_dir, out_dir, report)
    return report
