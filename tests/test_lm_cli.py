"""`glm4voice generate`: a tiny checkpoint folder (our save_pretrained + a synthetic tokenizer), routed output."""

import pytest
import torch

from glm4voice.cli import main
from glm4voice.cli.generate import generate_answer
from glm4voice.lm.config import GLMConfig
from glm4voice.lm.load import save_pretrained
from glm4voice.lm.model import GLM
from glm4voice.lm.text_tokenizer import TextTokenizer
from tests.test_lm_tokenizer import write_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = write_tokenizer(tmp_path_factory.mktemp("lm"))
    tok = TextTokenizer.from_dir(out)
    cfg = GLMConfig(hidden_size=32, num_layers=2, num_attention_heads=4, kv_channels=8, multi_query_group_num=2,
                    ffn_hidden_size=48, padded_vocab_size=tok.vocab_size + 3, seq_length=256,
                    torch_dtype="float32")
    torch.manual_seed(0)
    model = GLM(cfg)
    model.init_weights(0.3)
    save_pretrained(model, out)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


def test_generate_command_prints_routed_output(folder, capsys):
    assert main(["generate", "--lm", str(folder), "--text", "hello", "--temperature", "0", "--max-new-tokens", "12",
                 "--ids"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    ids = [int(i) for i in lines[-1].removeprefix("ids: ").split()]
    codes = lines[-2].removeprefix("audio: ").split()
    tok = TextTokenizer.from_dir(folder)
    assert len(ids) <= 12 and "stop:" in err
    assert [int(c) for c in codes] == [tok.audio_code(i) for i in ids if tok.is_audio(i)]
    assert "\n".join(lines[:-2]) == tok.decode([i for i in ids if i < tok.n_ranks])


def test_generate_answer_with_audio_tokens_and_language_lock(folder, tmp_path):
    codes_file = tmp_path / "codes.txt"
    codes_file.write_text("3 1 4 1 5")
    assert main(["generate", "--lm", str(folder), "--audio-tokens", str(codes_file), "--temperature", "1.5",
                 "--top-k", "0", "--top-p", "1", "--seed", "3", "--max-new-tokens", "40", "--language", "en",
                 "--codes-out", str(tmp_path / "out.txt")]) == 0
    text, codes, ids, stop = generate_answer(lm=folder, audio=[3, 1, 4, 1, 5], temperature=1.5, top_k=0, top_p=1.0,
                                             seed=3, max_new_tokens=40, language="en")
    assert text.isascii() and stop.reason in ("length", "stop_token")
    assert (tmp_path / "out.txt").read_text().split() == [str(c) for c in codes]


def test_generate_rejects_bad_input(folder, tmp_path, capsys):
    (tmp_path / "bad.txt").write_text("1 x 2")
    assert main(["generate", "--lm", str(folder), "--audio-tokens", str(tmp_path / "bad.txt")]) == 2
    assert main(["generate", "--lm", str(folder), "--audio-tokens", str(tmp_path / "missing.txt")]) == 2
    (tmp_path / "big.txt").write_text("999999")
    assert main(["generate", "--lm", str(folder), "--audio-tokens", str(tmp_path / "big.txt")]) == 2
    assert "codebook" in capsys.readouterr().err
