"""BER spellings of a DER value: every way X.690 lets a BER encoder write the same value that DER
(X.690 §10, §11) forbids, one element at a time.

``ber_variants(der)`` walks the element tree of ``der`` and yields, for each element, the whole
structure re-encoded with that one element spelled otherwise (its parents' lengths adjusted):

- a long-form length where the short form belongs, or a long form with a leading zero octet;
- an indefinite length (constructed elements);
- an INTEGER or ENUMERATED padded with a redundant leading octet;
- a BOOLEAN TRUE as 0x01;
- an OCTET STRING, BIT STRING or character string in the constructed form;
- an OBJECT IDENTIFIER with a padded first subidentifier;
- a UTCTime or GeneralizedTime with a zero offset instead of ``Z``.

Each variant names the rule and the element's path (``0.1.2``: the third child of the second
child of the root), so a failing case says which spelling got through.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

_STRINGS = {0x03, 0x04, 0x0C, 0x12, 0x13, 0x14, 0x16, 0x1A, 0x1E}  # BIT, OCTET and character strings


@dataclass
class Element:
    identifier: bytes
    content: bytes  # primitive contents ('' for constructed)
    children: list[Element] | None  # None for primitive

    @property
    def tag(self) -> int:
        return self.identifier[0]


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def parse(der: bytes) -> Element:
    element, end = _parse(der, 0)
    if end != len(der):
        raise ValueError("bytes after the element")
    return element


def _parse(der: bytes, pos: int) -> tuple[Element, int]:
    start = pos
    pos += 1
    if der[start] & 0x1F == 0x1F:
        while der[pos] & 0x80:
            pos += 1
        pos += 1
    identifier = der[start:pos]
    first = der[pos]
    pos += 1
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        size = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    end = pos + size
    if end > len(der):
        raise ValueError("truncated")
    if identifier[0] & 0x20:
        children = []
        while pos < end:
            child, pos = _parse(der, pos)
            children.append(child)
        return Element(identifier, b"", children), end
    return Element(identifier, der[pos:end], None), end


def encode(element: Element) -> bytes:
    """``element`` in DER (lengths recomputed: the fuzz mutator changes trees)."""
    return _dump(element, None, "")


def _mutations(element: Element) -> list[str]:
    found = ["long-form length"]
    if element.children is not None:
        found.append("indefinite length")
        return found
    tag, content = element.tag, element.content
    if tag in (0x02, 0x0A) and content:
        found.append("padded integer")
    if tag == 0x01 and content == b"\xff":
        found.append("BOOLEAN TRUE as 0x01")
    if tag in _STRINGS:
        found.append("constructed string")
    if tag == 0x06 and content:
        found.append("padded subidentifier")
    if tag in (0x17, 0x18) and content.endswith(b"Z"):
        found.append("time with an offset")
    return found


def _dump(element: Element, target: Element | None, mutation: str) -> bytes:
    identifier = element.identifier
    if element.children is not None:
        content = b"".join(_dump(child, target, mutation) for child in element.children)
    else:
        content = element.content
    if element is not target:
        return identifier + _length(len(content)) + content
    if mutation == "long-form length":
        encoded = _length(len(content))
        if len(encoded) == 1:
            return identifier + b"\x81" + encoded + content
        return identifier + bytes([encoded[0] + 1, 0]) + encoded[1:] + content
    if mutation == "indefinite length":
        return identifier + b"\x80" + content + b"\x00\x00"
    if mutation == "padded integer":
        content = (b"\xff" if content[0] & 0x80 else b"\x00") + content
    elif mutation == "BOOLEAN TRUE as 0x01":
        content = b"\x01"
    elif mutation == "constructed string":
        inner = identifier + _length(len(content)) + content
        return bytes([identifier[0] | 0x20]) + _length(len(inner)) + inner
    elif mutation == "padded subidentifier":
        content = b"\x80" + content
    elif mutation == "time with an offset":
        content = content[:-1] + b"+0000"
    return identifier + _length(len(content)) + content


def walk(element: Element, path: str = "0") -> Iterator[tuple[str, Element]]:
    yield path, element
    for number, child in enumerate(element.children or []):
        yield from walk(child, f"{path}.{number}")


def ber_variants(der: bytes) -> Iterator[tuple[str, bytes]]:
    """(description, bytes) for every BER-only spelling of one element of ``der``."""
    root = parse(der)
    for path, element in walk(root):
        for mutation in _mutations(element):
            yield f"{mutation} at {path} (tag {element.tag:#04x})", _dump(root, element, mutation)
