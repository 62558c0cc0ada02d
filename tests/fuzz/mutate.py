"""A structure-aware mutator for the targets that read DER (or PEM around it).

libFuzzer's byte mutations break a DER length almost every time, so nearly every input dies in
the outer parse, and atheris cannot see into cryptography's Rust parsers to learn the structure.
Half of the mutations here instead parse the input into its element tree (``tests.ber``), change
one element (its contents by libFuzzer's own mutator; or a child dropped, doubled, swapped or
replaced by another element of the tree; or its tag) and encode it again with correct lengths, so
the mutated value reaches the code behind the outer parse. PEM is unwrapped and wrapped again.
"""

from __future__ import annotations

import base64
import copy
import random
import re
from collections.abc import Callable

from tests.ber import Element, encode, parse, walk

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


def der_mutator(mutate: Callable[[bytes, int], bytes]) -> Callable[[bytes, int, int], bytes]:
    """A libFuzzer custom mutator; ``mutate`` is ``atheris.Mutate`` (the default mutations)."""

    def custom(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return mutate(data, max_size)
        pem = _PEM.search(data)
        try:
            der = base64.b64decode(pem.group(2), validate=False) if pem else data
            root = parse(der)
        except (ValueError, IndexError):
            return mutate(data, max_size)
        _change(root, rng, mutate)
        mutated = encode(root)
        if pem:
            body = base64.encodebytes(mutated)
            mutated = data[: pem.start(2)] + body.rstrip(b"\n") + data[pem.end(2) :]
        return mutated[:max_size]

    return custom


def _change(root: Element, rng: random.Random, mutate: Callable[[bytes, int], bytes]) -> None:
    elements = [element for _, element in walk(root)]
    element = rng.choice(elements)
    if element.children is None:
        if rng.random() < 0.8:
            element.content = mutate(element.content, max(2 * len(element.content), 16))
        else:
            element.identifier = bytes([rng.randrange(256)])
        return
    children = element.children
    choice = rng.randrange(5)
    if choice == 0 and children:
        del children[rng.randrange(len(children))]
    elif choice == 1 and children:
        children.insert(rng.randrange(len(children) + 1), children[rng.randrange(len(children))])
    elif choice == 2 and len(children) > 1:
        i, j = rng.sample(range(len(children)), 2)
        children[i], children[j] = children[j], children[i]
    elif choice == 3:
        children.insert(rng.randrange(len(children) + 1), copy.deepcopy(rng.choice(elements)))
    else:
        element.identifier = bytes([rng.choice((0x30, 0x31, 0xA0, 0xA1, 0xA2, 0xA3, 0x04, 0x24))])
        if not element.identifier[0] & 0x20:  # now primitive: its children become its contents
            element.content, element.children = b"".join(encode(c) for c in children), None
