"""Fresh retrieval questions as token ids, drawn on the training device: an endless stream with the distribution
of :func:`hf_growth.tasks.retrieval.retrieval_splits`' train split, for the sweeps in this folder (no fixed set
of 2^18 questions to tokenise and hold, no host-to-GPU copies per step).
"""

from __future__ import annotations

import functools

from hf_growth.tasks.retrieval import _chain_layout

__all__ = ["sample_retrieval_ids"]


@functools.lru_cache(maxsize=64)
def _chain_layout_on(num_pairs: int, hops: int, num_nodes: int, device):
    """:func:`_chain_layout` as index tensors on ``device``, made once (a host-to-GPU copy per call would wait for
    the GPU: the sampler then could not run ahead of the training step)."""
    import torch

    src, dst, needed = _chain_layout(num_pairs, hops, num_nodes)
    return torch.as_tensor(src, device=device), torch.as_tensor(dst, device=device), needed


def sample_retrieval_ids(
    n: int,
    num_pairs: int,
    hops: int,
    num_nodes: int,
    curriculum,
    token_ids,
    query_id: int,
    generator=None,
    separator_id: int | None = None,
    max_hops=None,
    newest_share: float = 0.0,
):
    """Fresh training examples as token ids, drawn on ``token_ids``' device: ``(questions (n, 2*num_pairs + 3),
    answers (n,))``, or ``3*num_pairs + 3`` tokens with ``separator_id`` (the id of ``<sep>``, written after every
    pair as ``pair_separator=True`` does). Same distribution and layout as :func:`retrieval_splits`' train split (distinct nodes,
    chains of ``hops`` links in shuffled pairs, ``| D x0``, answer ``x_D``); for training on an endless stream
    instead of a fixed set (nothing checks these against the validation and test questions, which fresh draws
    from this space repeat with negligible probability).

    ``curriculum``: a bool, or a bool tensor ``(n,)`` (per example: D uniform in ``1..hops``, else ``D = hops``).
    ``token_ids``: ``(V,)`` long tensor, the id of the word ``str(k)`` at index ``k`` (covering ``num_nodes`` and
    ``hops``); ``query_id``: the id of ``|``. ``max_hops``: an int or a long tensor ``(n,)`` in ``1..hops``; a
    curriculum example then draws D uniformly from ``1..max_hops`` (a staged curriculum raises it during training;
    the chains keep ``hops`` links, so only the question gets easier). An int or a CPU tensor is range-checked; a tensor
    already on the GPU is not (that check would make the host wait for the GPU every step). ``newest_share``: with
    ``max_hops``, the fraction of curriculum examples that ask for ``D = max_hops`` itself (the rest stay uniform in
    ``1..max_hops``, so D = max_hops has ``share + (1 - share) / max_hops`` of them); 0 draws nothing extra.

    >>> import torch
    >>> from hf_growth.tasks.retrieval import solve
    >>> from retrieval_sampling import sample_retrieval_ids
    >>> q, a = sample_retrieval_ids(4, num_pairs=6, hops=3, num_nodes=16, curriculum=True,
    ...                             token_ids=torch.arange(16), query_id=99)
    >>> q.shape, all(solve(" ".join("|" if t == 99 else str(t) for t in row)) == str(int(x))
    ...                  for row, x in zip(q.tolist(), a))
    (torch.Size([4, 15]), True)
    """
    import torch

    if not 0.0 <= newest_share <= 1.0 or (newest_share and max_hops is None):
        raise ValueError(f"newest_share must lie in [0, 1] and comes with max_hops, got {newest_share}")
    if token_ids.numel() < max(num_nodes, hops + 1):
        raise ValueError(f"token_ids covers {token_ids.numel()} numbers, need {max(num_nodes, hops + 1)}")
    device = token_ids.device
    src, dst, needed = _chain_layout_on(num_pairs, hops, num_nodes, device)
    rand = dict(generator=generator, device=device)
    nodes = torch.rand(n, num_nodes, **rand).argsort(1)[:, :needed]
    order = torch.rand(n, num_pairs, **rand).argsort(1)
    a = nodes[:, src].gather(1, order)
    b = nodes[:, dst].gather(1, order)
    if isinstance(curriculum, torch.Tensor):
        cur = curriculum.to(device).expand(n)
    else:
        cur = torch.full((n,), bool(curriculum), device=device)
    if max_hops is None:
        easy = torch.randint(1, hops + 1, (n,), **rand)
    else:
        top = max_hops if isinstance(max_hops, torch.Tensor) else torch.tensor(int(max_hops))
        # checked where it is given: a CPU tensor or an int costs no sync; one on the GPU is taken as it is
        if top.device.type == "cpu" and bool(((top < 1) | (top > hops)).any()):
            raise ValueError(f"max_hops must lie in 1..hops={hops}, got {top.tolist()}")
        top = top.to(device).expand(n)
        easy = 1 + (torch.rand(n, **rand) * top).long().clamp_max(top - 1)
        if newest_share:
            easy = torch.where(torch.rand(n, **rand) < newest_share, top, easy)
    d = torch.where(cur, easy, torch.full((n,), hops, device=device))
    start = (torch.rand(n, **rand) * (hops - d + 1)).long()  # chain 0 has slots 0..hops
    rows = torch.arange(n, device=device)
    x0, xd = nodes[rows, start], nodes[rows, start + d]
    columns = [token_ids[a], token_ids[b]]
    if separator_id is not None:
        columns.append(torch.full_like(a, separator_id))
    pairs = torch.stack(columns, dim=2).reshape(n, len(columns) * num_pairs)
    tail = torch.stack([torch.full_like(d, query_id), token_ids[d], token_ids[x0]], dim=1)
    return torch.cat([pairs, tail], dim=1), token_ids[xd]
