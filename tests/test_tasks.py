"""Task builders: formats, correctness, determinism, disjoint splits, sizes, tokenizer, CLI."""

from __future__ import annotations

import time

import pytest

from hf_growth import tasks
from hf_growth.tasks.arithmetic import evaluate
from hf_growth.tasks.lis import lis_length
from hf_growth.tasks.retrieval import solve


def lsb(text: str) -> int:
    return int("".join(reversed(text.split())))


def check_disjoint(splits):
    qs = [set(splits[s]["question"]) for s in tasks.SPLITS]
    for s, q in zip(tasks.SPLITS, qs):
        assert len(q) == len(splits[s]["question"]), f"duplicate questions inside {s}"
    assert not (qs[0] & qs[1]) and not (qs[0] & qs[2]) and not (qs[1] & qs[2])


def test_multiplication_format_and_correctness():
    s = tasks.multiplication_splits(digits_a=3, digits_b=2, train_size=500, validation_size=50, test_size=50, seed=1)
    check_disjoint(s)
    for split in tasks.SPLITS:
        for q, a in zip(s[split]["question"], s[split]["answer"]):
            left, right = q.split(" * ")
            assert len(left.split()) == 3 and len(right.split()) == 2
            assert lsb(left) >= 100 and lsb(right) >= 10  # exact digit counts, no leading zero
            assert lsb(a) == lsb(left) * lsb(right)
            assert not a.endswith(" 0")  # no padding: the most significant digit (last) is not zero
    # the paper's example
    import numpy as np

    from hf_growth.tasks.multiplication import format_numbers

    assert format_numbers(np.array([2365]), 4) == ["5 6 3 2"]
    assert format_numbers(np.array([2365 * 4347]), 8, strip=True) == ["5 5 6 0 8 2 0 1"]


def test_multiplication_small_space_and_determinism():
    s = tasks.multiplication_splits(digits=2)  # 8100 questions: train gets the rest
    assert [len(s[k]["question"]) for k in tasks.SPLITS] == [6100, 1000, 1000]
    check_disjoint(s)
    again = tasks.multiplication_splits(digits=2)
    assert again == s
    assert tasks.multiplication_splits(digits=2, seed=1)["test"] != s["test"]
    # the test split does not depend on the train size
    assert tasks.multiplication_splits(digits=2, train_size=10)["test"] == s["test"]
    with pytest.raises(ValueError, match="distinct questions"):
        tasks.multiplication_splits(digits=1, validation_size=50, test_size=50)


@pytest.mark.slow
def test_multiplication_full_size_fast():
    start = time.perf_counter()
    ds = tasks.multiplication(digits=4)
    elapsed = time.perf_counter() - start
    assert [ds[k].num_rows for k in tasks.SPLITS] == [808_000, 1000, 1000]
    assert elapsed < 60, elapsed
    test_q = set(ds["test"]["question"])
    assert not test_q & set(ds["train"]["question"])


def test_arithmetic():
    s = tasks.arithmetic_splits(num_operators=5, train_size=300, validation_size=30, test_size=30)
    check_disjoint(s)
    for q, a in zip(s["train"]["question"], s["train"]["answer"]):
        assert q.endswith(" =")
        assert sum(q.split().count(op) for op in "+-*/") == 5
        assert evaluate(q, 11) == int(a) and 0 <= int(a) < 11
    assert any("(" in q for q in s["train"]["question"]) and any("/" in q for q in s["train"]["question"])
    assert evaluate("( 3 + 5 ) * 2 - 7 / 4 =", 11) == ((8 * 2 - 7 * pow(4, -1, 11)) % 11)
    with pytest.raises(ValueError, match="prime"):
        tasks.arithmetic_splits(modulus=12)


def test_lis():
    s = tasks.lis_splits(length=12, max_value=30, train_size=300, validation_size=30, test_size=30)
    check_disjoint(s)
    for q, a in zip(s["test"]["question"], s["test"]["answer"]):
        tokens = q.split()
        assert tokens[-1] == "<sep>" and len(tokens) == 13
        values = [int(t) for t in tokens[:-1]]
        assert all(0 <= v < 30 for v in values)
        assert lis_length(values) == int(a)
    assert lis_length([3, 1, 2, 2, 5, 4]) == 3  # strict


@pytest.mark.parametrize("curriculum", [True, False])
def test_retrieval(curriculum):
    s = tasks.retrieval_splits(
        num_pairs=10, hops=4, num_nodes=40, curriculum=curriculum, train_size=400, validation_size=40, test_size=40
    )
    check_disjoint(s)
    train_hops = set()
    for split in tasks.SPLITS:
        for q, a in zip(s[split]["question"], s[split]["answer"]):
            links, query = q.split(" | ")
            tokens = links.split()
            assert len(tokens) == 20 and len(set(tokens[0::2])) == 10  # each node has one successor
            assert solve(q) == a
            hops, start = (int(t) for t in query.split())
            assert str(start) in tokens[0::2]  # the query node (last) is the source of a link
            if split == "train":
                train_hops.add(hops)
            else:
                assert hops == 4
    assert train_hops == ({1, 2, 3, 4} if curriculum else {4})
    with pytest.raises(ValueError, match="num_nodes"):
        tasks.retrieval_splits(num_pairs=30, hops=4, num_nodes=20)


def test_retrieval_pair_separator():
    """``<sep>`` after every pair: the same questions otherwise, the same answers, tokens the sampler writes too."""
    kw = dict(num_pairs=6, hops=3, num_nodes=30, train_size=50, validation_size=5, test_size=5, seed=2)
    plain, sep = tasks.retrieval_splits(**kw), tasks.retrieval_splits(**kw, pair_separator=True)
    for split in tasks.SPLITS:
        for q, q_sep, a, a_sep in zip(
            plain[split]["question"], sep[split]["question"], plain[split]["answer"], sep[split]["answer"]
        ):
            tokens = q_sep.split()
            assert tokens[2:18:3] == ["<sep>"] * 6 and q_sep.replace(" <sep>", "") == q
            assert solve(q_sep) == a_sep == a


def test_dataset_dict_and_exact_match():
    ds = tasks.multiplication(digits=2, train_size=20, validation_size=5, test_size=5)
    assert list(ds) == ["train", "validation", "test"] and ds["train"].column_names == ["question", "answer"]
    assert tasks.build("lis", length=5, train_size=4, validation_size=2, test_size=2)["test"].num_rows == 2
    with pytest.raises(ValueError, match="unknown task"):
        tasks.build("sorting")
    assert tasks.exact_match(["1 2", " 3 ", "4"], ["1  2", "3", "5"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="references"):
        tasks.exact_match(["1"], ["1", "2"])


def test_tokenizer_round_trip_and_coverage(tmp_path):
    from transformers import AutoTokenizer

    tok = tasks.build_tokenizer()
    samples = [
        *sum(tasks.multiplication_splits(digits=3, train_size=5, validation_size=1, test_size=1)["train"].values(), []),
        *sum(tasks.arithmetic_splits(train_size=5, validation_size=1, test_size=1)["train"].values(), []),
        *sum(tasks.lis_splits(train_size=5, validation_size=1, test_size=1)["train"].values(), []),
        *sum(tasks.retrieval_splits(train_size=5, validation_size=1, test_size=1)["train"].values(), []),
    ]
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and len(ids) == len(text.split())
        assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded("5 6 * <pause> 7")["input_ids"] == tok("5 6 * <pause> 7")["input_ids"]
    assert loaded.pad_token == "<pad>" and loaded.eos_token == "<eos>" and "<pause>" in loaded.all_special_tokens


def test_cli_data(tmp_path, capsys):
    from datasets import load_from_disk

    from hf_growth.cli import main

    out = tmp_path / "mult"
    assert (
        main(
            [
                "data",
                "multiplication",
                str(out),
                "--digits",
                "2",
                "--train-size",
                "30",
                "--validation-size",
                "5",
                "--test-size",
                "5",
            ]
        )
        == 0
    )
    ds = load_from_disk(str(out))
    assert ds["train"].num_rows == 30 and ds["test"].num_rows == 5
    assert main(["data", "multiplication", str(out), "--digits", "2"]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "lis", str(tmp_path / "l"), "--hops", "3"]) == 2
    assert (
        main(
            [
                "data",
                "retrieval",
                str(tmp_path / "r"),
                "--num-pairs",
                "8",
                "--hops",
                "2",
                "--no-curriculum",
                "--train-size",
                "20",
                "--validation-size",
                "4",
                "--test-size",
                "4",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "data",
                "retrieval",
                str(tmp_path / "rs"),
                "--num-pairs",
                "8",
                "--hops",
                "2",
                "--pair-separator",
                "--train-size",
                "20",
                "--validation-size",
                "4",
                "--test-size",
                "4",
            ]
        )
        == 0
    )
    assert load_from_disk(str(tmp_path / "rs"))["train"][0]["question"].split()[2] == "<sep>"
    assert main(["data", "lis", str(tmp_path / "ls"), "--pair-separator"]) == 2  # not an option of lis


def test_cli_data_overwrite_replaces_only_a_dataset(tmp_path, capsys):
    """``--overwrite`` replaces an earlier dataset; a directory holding anything else is refused and kept."""
    from datasets import load_from_disk

    from hf_growth.cli import main

    small = ["--digits", "2", "--train-size", "6", "--validation-size", "2", "--test-size", "2"]
    out = tmp_path / "mult"
    assert main(["data", "multiplication", str(out), *small]) == 0
    assert (
        main(
            [
                "data",
                "multiplication",
                str(out),
                *small[:2],
                "--train-size",
                "8",
                "--validation-size",
                "2",
                "--test-size",
                "2",
                "--overwrite",
            ]
        )
        == 0
    )
    assert load_from_disk(str(out))["train"].num_rows == 8
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["data", "multiplication", str(notes), *small, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a dataset written by save_to_disk" in err and "notes.txt" in err
    assert sorted(p.name for p in notes.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directory left
