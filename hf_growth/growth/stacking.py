"""MIDAS (middle) and gradual (top) stacking: which blocks of layers to copy (Saunshi et al. 2409.19044).

Layers form blocks of ``block_size``. Each growth copies one block and inserts the copy right after it:
``middle`` copies block ceil(n/2) (1-indexed, n = current number of blocks), ``top`` the last block.
Repeated until the target depth. This changes the function by design.

>>> sources, copies = stack_layer_sources(6, 8, 2, "middle")
>>> [j for j, _ in sources]
[0, 1, 2, 3, 2, 3, 4, 5]
>>> copies
[{'block': [2, 4], 'inserted_at': 4, 'layers': [2, 3]}]
"""

from __future__ import annotations


def midas_block_index(num_blocks: int, where: str = "middle") -> int:
    """0-indexed block to copy: ceil(n/2) - 1 for ``middle``, n - 1 for ``top``."""
    if where == "top":
        return num_blocks - 1
    return -(-num_blocks // 2) - 1


def stack_layer_sources(
    layers: int, to: int, block_size: int, where: str = "middle"
) -> tuple[list[tuple[int, str]], list[dict]]:
    """For a stack of ``layers`` grown to ``to``: per new layer ``(old layer, "keep" | "copy")`` and the list
    of copies made (``block``: old-stack-relative [start, stop) of the copied layers at the time of the copy,
    ``inserted_at``: position of the copy). ValueError when the sizes do not fit the blocks."""
    if layers % block_size:
        raise ValueError(f"{layers} layers do not form blocks of {block_size}; pick a block_size dividing {layers}")
    if (to - layers) % block_size:
        raise ValueError(f"{layers} -> {to} layers is not a whole number of blocks of {block_size}")
    # current stack as (old layer, mode) entries
    stack: list[tuple[int, str]] = [(j, "keep") for j in range(layers)]
    copies = []
    while len(stack) < to:
        n = len(stack) // block_size
        block = midas_block_index(n, where)
        if where == "middle" and n < 3:
            raise ValueError(
                f"MIDAS middle stacking needs at least 3 blocks so that the first and last layers are never "
                f"copied; {len(stack)} layers make {n} block(s) of {block_size}: use a smaller block_size or "
                "where: top"
            )
        start, stop = block * block_size, (block + 1) * block_size
        copied = [(j, "copy") for j, _ in stack[start:stop]]
        stack = stack[:stop] + copied + stack[stop:]
        copies.append({"block": [start, stop], "inserted_at": stop, "layers": [j for j, _ in copied]})
    return stack, copies
