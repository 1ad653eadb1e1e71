"""`noisesweep srdd`: writes a valid profile and a readable table; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from quant.srdd import load_profile
from sweep.cli import main


@pytest.fixture(autouse=True)
def _eager_quant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOISESWEEP_COMPILE", "0")  # small tensors: skip the one-off compile


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Hugging Face directory: a random 3-layer Qwen2 and the character tokenizer."""
    from objective.tiny.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("rand-qwen2")
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _table_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln[:5].strip().isdigit()]


def test_srdd_tiny_writes_a_profile_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from objective.tiny import load_tiny

    out = tmp_path / "tiny.json"
    rc = main(["srdd", "--model", "tiny", "--format", "mxfp4", "--out", str(out), "--batches", "1", "--batch-size", "8"])
    assert rc == 0
    prof = load_profile(out)
    n = load_tiny()[0].config.num_hidden_layers
    assert prof.num_layers == n and prof.model == "tiny" and prof.format == "mxfp4"
    assert sorted(i for z in prof.zones for i in z.layers) == list(range(n))
    assert "tiny-arith" in prof.source["calibration"]
    text = capsys.readouterr().out
    rows = _table_lines(text)
    assert len(rows) == n and all(prof.zone_of(int(r.split()[0])) in r for r in rows)
    assert "linear_input" in text and f"wrote {out}" in text


def test_srdd_local_directory_nvfp4(hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "p.json"
    rc = main(["srdd", "--model", str(hf_dir), "--format", "nvfp4", "--out", str(out), "--batches", "2", "--batch-size", "4"])
    assert rc == 0
    prof = load_profile(out)
    assert (prof.num_layers, prof.format, prof.source["batches"]) == (3, "nvfp4", 2)
    assert prof.source["calibration"] == "built-in word problems"
    first = _table_lines(capsys.readouterr().out)[0].split()
    assert first[0] == "0" and float(first[2]) == pytest.approx(prof.layers[0].output.rel_error * 100, abs=0.01)


def test_srdd_calibrates_on_a_local_gsm8k_file(hf_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = [
        {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
         "reward_model": {"ground_truth": str(2 * i)}}
        for i in range(5)
    ]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "p.json"
    assert main(["srdd", "--model", str(hf_dir), "--out", str(out), "--data", str(data), "--batches", "1"]) == 0
    prof = load_profile(out)
    assert prof.source["calibration"] == f"gsm8k prompts from {data}"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    # 16 sequences drawn cyclically from the 5 prompts (all the same length here): every token counts
    lengths = {len(tok(f"What is {i} plus {i}?", add_special_tokens=False)["input_ids"]) for i in range(5)}
    assert len(lengths) == 1 and prof.source["tokens"] == 16 * lengths.pop()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "/nonexistent/model", "--out", "{tmp}/p.json"], "no such model directory"),
        (["--model", "{tmp}", "--out", "{tmp}/p.json"], "not a Hugging Face model directory"),
        (["--model", "{hf}", "--out", "{tmp}/p.json", "--format", "int4"], "--format must be one of"),
        (["--model", "{hf}", "--out", "{tmp}/p.json", "--batches", "0"], "--batches must be a positive integer"),
        (["--model", "{hf}", "--out", "{tmp}/p.json", "--batch-size", "x"], "--batch-size must be a positive integer"),
        (["--out", "{tmp}/p.json"], "--model is required"),
        (["--model", "{hf}"], "--out is required"),
        (["--model", "{hf}", "--out", "{tmp}"], "is a directory"),
        (["--model", "{hf}", "--out", "{tmp}/p.json", "--data", "{tmp}/none.jsonl"], "--data: file not found"),
    ],
)
def test_srdd_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(tmp=tmp_path, hf=hf_dir) for a in argv]
    assert main(["srdd", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("noisesweep: error: ") and needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "p.json").exists()
