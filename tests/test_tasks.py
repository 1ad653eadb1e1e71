"""Tasks: the tiny-arith split and the GSM8K local-file loader (verl's schema)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from objective.reward import gsm8k_strict_score
from objective.tasks import Example, load_task
from objective.tasks.gsm8k import load_gsm8k
from objective.tasks.tiny_arith import format_answer, split


def test_tiny_split_is_deterministic_and_disjoint() -> None:
    a = load_task({"name": "tiny-arith", "seed": 1})
    b = load_task(SimpleNamespace(name="tiny-arith", seed=1, num_val=1000, train_path=None, val_path=None))
    assert a.val == b.val and a.train == b.train
    assert len(a.val) == 1000 and len(a.train) > 6_000  # the final score reads >= 1,000 problems
    train, held = split()
    assert len(held) >= 1000 and len(train) + len(held) == 7969
    assert not {e.prompt for e in a.train} & {e.prompt for e in a.val}
    assert a.data_source == "tiny-arith" and all(e.data_source == "tiny-arith" for e in a.val)


def test_tiny_val_is_fixed_across_seeds_and_train_order_is_not() -> None:
    a = load_task({"name": "tiny-arith", "seed": 1})
    c = load_task({"name": "tiny-arith", "seed": 2})
    assert a.val == c.val  # trials of a sweep are compared on the same problems
    assert a.train != c.train and sorted(e.prompt for e in a.train) == sorted(e.prompt for e in c.train)
    small = load_task({"name": "tiny-arith", "num_val": 20})
    assert small.val == a.val[:20]


def test_tiny_examples_are_correct_and_scored_by_the_gsm8k_reward() -> None:
    train, held = split()
    for prompt, ans in train[:200] + held[:200]:
        expr = prompt.rstrip("=")
        assert eval(expr) == ans  # noqa: S307 - our own generated arithmetic
        assert gsm8k_strict_score(format_answer(ans), str(ans)) == 1.0
    assert any(ans < 0 for _, ans in train)  # negatives exercise the `-?` of the regex
    assert any(ans > 150 for _, ans in held) and any(ans < -150 for _, ans in held)  # three-digit operands
    task = load_task({"name": "tiny-arith"})
    assert task.format_prompt(task.val[0], tokenizer=None) == task.val[0].prompt


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"name": "nope"}, "task.name"),
        ({"name": "tiny-arith", "num_val": 0}, "num_val"),
        ({"name": "tiny-arith", "num_val": 10**6}, "num_val"),
        ({"name": "gsm8k", "train_path": None, "val_path": None}, "train_path"),
    ],
)
def test_bad_task_config(cfg: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_task(cfg)


def _rows(n: int) -> list[dict]:
    return [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"What is {i} + 1? Let's think step by step and output the final answer after \"####\"."}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
            "extra_info": {"index": i},
        }
        for i in range(n)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_jsonl(tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", _rows(5))
    val = _write_jsonl(tmp_path / "test.jsonl", _rows(4))
    task = load_task({"name": "gsm8k", "train_path": str(train), "val_path": str(val), "num_val": 3, "seed": 0})
    assert task.data_source == "openai/gsm8k"
    assert len(task.train) == 5 and len(task.val) == 3
    assert task.val[2] == Example(prompt=_rows(3)[2]["prompt"][0]["content"], ground_truth="3", data_source="openai/gsm8k")


def test_gsm8k_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(6)), path)
    ex = load_gsm8k(path)
    assert [e.ground_truth for e in ex] == [str(i + 1) for i in range(6)]
    assert ex[0].messages[0]["role"] == "user"


class _ChatTok:
    """Stands in for a real instruct tokenizer: records the call and renders a simple template."""

    chat_template = "fake"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):  # noqa: ANN001
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_gsm8k_format_prompt_uses_chat_template(tmp_path: Path) -> None:
    rows = _rows(2)
    rows[0]["prompt"] = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    p = _write_jsonl(tmp_path / "a.jsonl", rows)
    task = load_task({"name": "gsm8k", "train_path": str(p), "val_path": str(p)})
    assert task.format_prompt(task.val[0], _ChatTok()) == "<system>S<user>Q<assistant>"
    no_template = SimpleNamespace(chat_template=None)
    with pytest.raises(ValueError, match="chat template"):
        task.format_prompt(task.val[0], no_template)


def test_gsm8k_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_task({"name": "gsm8k", "train_path": str(missing), "val_path": str(missing)})


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.pop("reward_model"), "missing key 'reward_model'"),
        (lambda r: r["reward_model"].pop("ground_truth"), "reward_model.ground_truth"),
        (lambda r: r.pop("prompt"), "missing key 'prompt'"),
        (lambda r: r.update(prompt=[{"text": "x"}]), "list of"),
    ],
)
def test_gsm8k_schema_errors_name_file_and_key(tmp_path: Path, mutate, match: str) -> None:  # noqa: ANN001
    rows = _rows(3)
    mutate(rows[1])
    p = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=match) as exc:
        load_gsm8k(p)
    msg = str(exc.value)
    assert "bad.jsonl" in msg and "row 1" in msg and "\n" not in msg


def test_gsm8k_bad_json_and_suffix(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": [\n')
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        load_gsm8k(p)
    q = tmp_path / "x.csv"
    q.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported"):
        load_gsm8k(q)
    binary = tmp_path / "train.jsonl"
    binary.write_bytes(b"PAR1\xff\xfe\x00parquet bytes under a .jsonl name")
    with pytest.raises(ValueError, match="train.jsonl: not UTF-8 text") as info:
        load_gsm8k(binary)
    assert "\n" not in str(info.value)
