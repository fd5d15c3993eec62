"""retrieval_sampling.sample_retrieval_ids: fresh questions on the device with the task builder's distribution."""

from __future__ import annotations

import pytest

from hf_growth import tasks
from hf_growth.tasks.retrieval import solve


@pytest.mark.parametrize("curriculum", [True, False, "mixed"])
def test_sample_retrieval_ids_matches_the_builder(curriculum):
    """Fresh examples on the device: the builder's layout, tokens and answers; D per example from the curriculum."""
    import torch
    from retrieval_sampling import sample_retrieval_ids

    tok = tasks.build_tokenizer(max_number=64)
    ids = torch.tensor(tok.convert_tokens_to_ids([str(k) for k in range(40)]))
    flags = torch.arange(300) % 2 == 0 if curriculum == "mixed" else curriculum
    q, a = sample_retrieval_ids(
        300,
        num_pairs=10,
        hops=4,
        num_nodes=40,
        curriculum=flags,
        token_ids=ids,
        query_id=tok.convert_tokens_to_ids("|"),
        generator=torch.Generator().manual_seed(0),
    )
    assert q.shape == (300, 23) and a.shape == (300,)
    built = tasks.retrieval_splits(num_pairs=10, hops=4, num_nodes=40, train_size=1, validation_size=0, test_size=0)
    assert len(tok(built["train"]["question"][0])["input_ids"]) == q.shape[1]
    hops = []
    for row, answer in zip(q.tolist(), a.tolist()):
        question = tok.decode(row)
        links, query = question.split(" | ")
        tokens = links.split()
        assert len(set(tokens[0::2])) == 10 and len(set(tokens)) == 10 + 3  # chains of 4 links: 13 nodes
        assert solve(question) == tok.decode([answer])
        hops.append(int(query.split()[0]))
    hops = torch.tensor(hops)
    if curriculum is False:
        assert set(hops.tolist()) == {4}
    elif curriculum is True:
        assert set(hops.tolist()) == {1, 2, 3, 4}
    else:
        assert set(hops[1::2].tolist()) == {4} and set(hops[0::2].tolist()) == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="num_nodes"):
        sample_retrieval_ids(4, num_pairs=30, hops=4, num_nodes=20, curriculum=True, token_ids=ids, query_id=0)
    with pytest.raises(ValueError, match="token_ids covers"):
        sample_retrieval_ids(4, num_pairs=10, hops=4, num_nodes=40, curriculum=True, token_ids=ids[:20], query_id=0)


def test_sample_retrieval_ids_max_hops():
    """A staged curriculum: curriculum examples draw D from 1..max_hops (per example); the others stay at hops."""
    import torch
    from retrieval_sampling import sample_retrieval_ids

    tok = tasks.build_tokenizer(max_number=64)
    ids = torch.tensor(tok.convert_tokens_to_ids([str(k) for k in range(40)]))
    top = torch.tensor([1, 2, 4]).repeat_interleave(200)
    flags = torch.ones(600, dtype=torch.bool)
    flags[-100:] = False
    q, a = sample_retrieval_ids(
        600,
        num_pairs=10,
        hops=4,
        num_nodes=40,
        curriculum=flags,
        token_ids=ids,
        query_id=tok.convert_tokens_to_ids("|"),
        generator=torch.Generator().manual_seed(0),
        max_hops=top,
    )
    questions = [tok.decode(row) for row in q.tolist()]
    assert all(solve(x) == tok.decode([y]) for x, y in zip(questions, a.tolist()))
    hops = [int(x.split(" | ")[1].split()[0]) for x in questions]
    assert set(hops[:200]) == {1} and set(hops[200:400]) == {1, 2} and set(hops[400:500]) == {1, 2, 3, 4}
    assert set(hops[500:]) == {4}
    for bad in (0, 5, torch.tensor([1, 5])):
        with pytest.raises(ValueError, match="max_hops must lie in 1..hops=4"):
            sample_retrieval_ids(
                2, num_pairs=10, hops=4, num_nodes=40, curriculum=True, token_ids=ids, query_id=0, max_hops=bad
            )
    # newest_share: that fraction of curriculum examples asks for max_hops itself, the rest stay uniform
    n, share = 20000, 0.5
    q, a = sample_retrieval_ids(
        n,
        num_pairs=10,
        hops=4,
        num_nodes=40,
        curriculum=True,
        token_ids=torch.arange(40),
        query_id=99,
        generator=torch.Generator().manual_seed(1),
        max_hops=3,
        newest_share=share,
    )
    d = torch.bincount(q[:, -2], minlength=5)[1:].double() / n
    expected = torch.tensor([(1 - share) / 3] * 2 + [share + (1 - share) / 3, 0.0], dtype=torch.double)
    assert (d - expected).abs().max() < 0.015 and d[3] == 0  # 3 sigma ~ 0.01 at n = 20,000
    assert all(
        solve(" ".join("|" if t == 99 else str(t) for t in row)) == str(int(x))
        for row, x in zip(q[:200].tolist(), a[:200])
    )
    same = dict(num_pairs=10, hops=4, num_nodes=40, curriculum=True, token_ids=ids, query_id=0, max_hops=top)
    assert torch.equal(
        sample_retrieval_ids(600, generator=torch.Generator().manual_seed(0), **same)[0],
        sample_retrieval_ids(600, generator=torch.Generator().manual_seed(0), newest_share=0.0, **same)[0],
    )  # 0: the stream of draws is unchanged
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="newest_share"):
            sample_retrieval_ids(
                2,
                num_pairs=10,
                hops=4,
                num_nodes=40,
                curriculum=True,
                token_ids=ids,
                query_id=0,
                max_hops=2,
                newest_share=bad,
            )
    with pytest.raises(ValueError, match="comes with max_hops"):
        sample_retrieval_ids(
            2, num_pairs=10, hops=4, num_nodes=40, curriculum=True, token_ids=ids, query_id=0, newest_share=0.5
        )


def test_sample_retrieval_ids_pair_separator():
    """With ``separator_id`` the sampler writes ``<sep>`` after every pair, as ``retrieval_splits(pair_separator=True)``."""
    import torch
    from retrieval_sampling import sample_retrieval_ids

    sep = tasks.retrieval_splits(
        num_pairs=6, hops=3, num_nodes=30, train_size=50, validation_size=5, test_size=5, seed=2, pair_separator=True
    )
    tok = tasks.build_tokenizer(max_number=64)
    ids = torch.tensor(tok.convert_tokens_to_ids([str(k) for k in range(30)]))
    q, a = sample_retrieval_ids(
        50,
        num_pairs=6,
        hops=3,
        num_nodes=30,
        curriculum=True,
        token_ids=ids,
        query_id=tok.convert_tokens_to_ids("|"),
        separator_id=tok.convert_tokens_to_ids("<sep>"),
    )
    assert q.shape[1] == len(tok(sep["train"]["question"][0])["input_ids"]) == 3 * 6 + 3
    for row, answer in zip(q.tolist(), a.tolist()):
        question = tok.decode(row)
        assert question.split()[2:18:3] == ["<sep>"] * 6 and solve(question) == tok.decode([answer])
