"""Strict DER (X.690 §10, §11) for OCSP requests: a BER form is refused before anything parses it.

Why: asn1crypto (and OpenSSL) read BER as well as DER, so an indefinite length, a long-form
length, a padded INTEGER or a BOOLEAN of 0x01 would be answered like the DER request it spells
differently. RFC 6960 §4.1.1 says requests are DER, docs/ocsp.md promises ``malformedRequest`` for
anything else, and the responder's answer must not depend on which of many spellings a client
chose (a CertID is echoed byte for byte, a GET URL is a cache key).

This is a walk over the tag-length-value structure that checks the encoding rules, not the
schema: what the OCSPRequest contains is ``ocsp.request``'s business. Checked:

- one element and nothing after it; every length definite, in the fewest octets (§10.1), within
  its parent; tags in the fewest octets;
- universal types: only SEQUENCE and SET constructed (no constructed strings, §10.2), BOOLEAN
  0x00 or 0xFF (§11.1), INTEGER and ENUMERATED minimal (§8.3.2), NULL empty, BIT STRING with at
  most 7 unused bits, all zero (§11.2), OBJECT IDENTIFIER subidentifiers minimal (§8.19.2),
  UTCTime and GeneralizedTime in their DER forms (§11.7, §11.8).

Not checked: the content of implicitly tagged primitives (their type is the schema's), SET OF
order (§11.6; requests carry sets only inside attached certificates) and DEFAULT values spelled
out (§11.5: a version v1 or critical FALSE that is present is tolerated).

The walk is plain Python over the bytes: about 0.4 µs per element (docs/ocsp.md gives the figure
per request); the common unsigned request never reaches it (``ocsp.request``'s fast path accepts
only DER).
"""

from __future__ import annotations

import re

_UTC_TIME = re.compile(rb"[0-9]{12}Z")
_GENERALIZED_TIME = re.compile(rb"[0-9]{14}(?:\.[0-9]*[1-9])?Z")
_PADDED_SUBIDENTIFIER = re.compile(rb"(?:^|[\x00-\x7f])\x80")
_MAX_LENGTH_OCTETS = 3  # 16 MiB; requests are at most 16 KiB (ocsp.wsgi.MAX_BODY)
_SEQUENCE, _SET = 16, 17


class NotDER(ValueError):
    """The bytes are not one DER element; the message says which rule failed and where."""


def check_der(data: bytes) -> None:
    """Raise ``NotDER`` unless ``data`` is exactly one element in DER."""
    size = len(data)
    if not size:
        raise NotDER("empty")
    ends = [size]  # the end of each enclosing constructed element's contents
    pos = 0
    while True:
        limit = ends[-1]
        if pos == limit:
            if len(ends) == 1:
                return
            ends.pop()
            continue
        start = pos
        if pos + 2 > limit:
            raise NotDER(f"truncated element at offset {start}")
        tag = data[pos]
        pos += 1
        number = tag & 0x1F
        if number == 0x1F:
            if data[pos] == 0x80:
                raise NotDER(f"tag number in more octets than needed at offset {start}")
            number = 0
            while True:
                if pos >= limit or number > 0xFFFF:
                    raise NotDER(f"bad tag number at offset {start}")
                octet = data[pos]
                pos += 1
                number = (number << 7) | (octet & 0x7F)
                if octet < 0x80:
                    break
            if number < 0x1F:
                raise NotDER(f"tag number {number} in the long form at offset {start}")
            if pos >= limit:
                raise NotDER(f"truncated element at offset {start}")
        first = data[pos]
        pos += 1
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise NotDER(f"indefinite length at offset {start}")
        else:
            count = first & 0x7F
            if count > _MAX_LENGTH_OCTETS or pos + count > limit:
                raise NotDER(f"length of {count} octets at offset {start}")
            if data[pos] == 0:
                raise NotDER(f"length in more octets than needed at offset {start}")
            length = int.from_bytes(data[pos : pos + count], "big")
            if length < 0x80:
                raise NotDER(f"long-form length {length} at offset {start}")
            pos += count
        end = pos + length
        if end > limit:
            raise NotDER(f"element at offset {start} runs past its container")
        if len(ends) == 1 and end != size:
            raise NotDER(f"{size - end} bytes after the element")
        universal = tag < 0x40
        if tag & 0x20:
            if universal and number not in (_SEQUENCE, _SET):
                raise NotDER(f"constructed form of universal type {number} at offset {start}")
            ends.append(end)
            continue
        if universal:
            _check_primitive(number, data[pos:end], start)
        pos = end


def _check_primitive(number: int, content: bytes, offset: int) -> None:
    if number == 1:  # BOOLEAN
        if content not in (b"\x00", b"\xff"):
            raise NotDER(f"BOOLEAN other than 0x00 or 0xFF at offset {offset}")
    elif number in (2, 10):  # INTEGER, ENUMERATED
        if not content:
            raise NotDER(f"empty INTEGER at offset {offset}")
        if len(content) > 1 and (
            (content[0] == 0 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)
        ):
            raise NotDER(f"INTEGER in more octets than needed at offset {offset}")
    elif number == 3:  # BIT STRING
        if not content or content[0] > 7 or (len(content) == 1 and content[0]):
            raise NotDER(f"bad unused-bits count in BIT STRING at offset {offset}")
        if content[0] and content[-1] & ((1 << content[0]) - 1):
            raise NotDER(f"unused bits that are not zero in BIT STRING at offset {offset}")
    elif number == 5:  # NULL
        if content:
            raise NotDER(f"NULL with contents at offset {offset}")
    elif number in (6, 13):  # OBJECT IDENTIFIER, RELATIVE-OID
        if not content or content[-1] >= 0x80 or _PADDED_SUBIDENTIFIER.search(content):
            raise NotDER(f"bad OBJECT IDENTIFIER at offset {offset}")
    elif number == 23:  # UTCTime
        if not _UTC_TIME.fullmatch(content):
            raise NotDER(f"UTCTime not in the form YYMMDDHHMMSSZ at offset {offset}")
    elif number == 24:  # GeneralizedTime
        if not _GENERALIZED_TIME.fullmatch(content):
            raise NotDER(f"GeneralizedTime not in the form YYYYMMDDHHMMSS[.f]Z at offset {offset}")
    elif number in (0, _SEQUENCE, _SET):
        raise NotDER(f"primitive universal type {number} at offset {offset}")
