"""DER for CRLs, written by hand where speed matters (RFC 5280 §5.1, X.690).

Why not cryptography's ``CertificateRevocationListBuilder`` for the entries: it needs one Python
object per revoked certificate and, with ``add_revoked_certificate``, copies the list on each call
(quadratic). A CRL of millions of entries is mostly ``revokedCertificates``; each entry is a short
SEQUENCE whose parts are known from three or four database columns, so it is encoded here straight
from the column bytes into the output, a batch at a time. The fixed parts (names, extensions) are
encoded by cryptography and asn1crypto and only framed here.

Every entry is shorter than 128 octets (a serial of at most 21 octets, a time, two small
extensions), so entry lengths are single octets; only the outer structures need long lengths.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from datetime import UTC, datetime

from asn1crypto import core

from ca.errors import BadRequest
from ca.revocation import REASON_CODES, canonical_reason

# Tags (X.690 §8.1.2): universal, constructed where noted.
SEQUENCE = 0x30
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
CONTEXT_0 = 0xA0  # [0] EXPLICIT, constructed

OID_REASON_CODE = "2.5.29.21"
OID_INVALIDITY_DATE = "2.5.29.24"


def length(n: int) -> bytes:
    """X.690 §8.1.3 definite length: short form below 128, else long form."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def header(tag: int, content_length: int) -> bytes:
    return bytes((tag,)) + length(content_length)


def tlv(tag: int, content: bytes) -> bytes:
    return header(tag, len(content)) + content


def integer(value: int) -> bytes:
    """A DER INTEGER (two's complement, minimal octets)."""
    size = value.bit_length() // 8 + 1 if value >= 0 else ((-value - 1).bit_length() // 8 + 1)
    return tlv(INTEGER, value.to_bytes(size, "big", signed=True))


def oid(dotted: str) -> bytes:
    return bytes(core.ObjectIdentifier(dotted).dump())


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime in a CRL")
    return value.astimezone(UTC)


def time(value: datetime) -> bytes:
    """RFC 5280 §5.1.2.4/§4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, whole seconds."""
    value = _utc(value)
    if value.year < 2050:
        return tlv(UTC_TIME, value.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return tlv(GENERALIZED_TIME, value.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def digits14(value: datetime) -> bytes:
    """``YYYYMMDDhhmmss`` in UTC: the form the streaming reader gets times in."""
    return _utc(value).strftime("%Y%m%d%H%M%S").encode("ascii")


def extension(oid_dotted: str, critical: bool, value_der: bytes) -> bytes:
    """RFC 5280 §4.1 Extension: critical is omitted when FALSE (DER, DEFAULT)."""
    body = oid(oid_dotted) + (b"\x01\x01\xff" if critical else b"") + tlv(OCTET_STRING, value_der)
    return tlv(SEQUENCE, body)


# -- CRL entries -------------------------------------------------------------------------------


def _reason_extension(code: int) -> bytes:
    return extension(OID_REASON_CODE, False, bytes((0x0A, 0x01, code)))  # ENUMERATED


# The reasonCode extension per stored reason. RFC 5280 §5.3.1: "unspecified" SHOULD be absent.
REASON_EXTENSIONS: dict[str, bytes] = {
    name: (b"" if code == 0 else _reason_extension(code)) for name, code in REASON_CODES.items()
}
# The whole crlEntryExtensions field for an entry that has only a reason (the common case).
ENTRY_EXTENSIONS: dict[str, bytes] = {
    name: (tlv(SEQUENCE, ext) if ext else b"") for name, ext in REASON_EXTENSIONS.items()
}
_INVALIDITY_PREFIX = b"\x30\x18" + oid(OID_INVALIDITY_DATE) + b"\x04\x11" + bytes((GENERALIZED_TIME, 0x0F))
_SEPARATORS = b"-: T"


def _entry_extensions(reason: str, invalidity: bytes | None) -> bytes:
    if invalidity is None:
        return ENTRY_EXTENSIONS[reason]
    inv = _INVALIDITY_PREFIX + invalidity.translate(None, _SEPARATORS)[:14] + b"Z"
    return tlv(SEQUENCE, REASON_EXTENSIONS[reason] + inv)


def _stored(reason: str, serial_hex: bytes) -> str:
    """The canonical name of a reason in another spelling (rows written before the store kept one
    spelling); a reason no spelling matches stops the build rather than mislabel an entry."""
    if reason in REASON_EXTENSIONS:
        return reason
    try:
        return canonical_reason(reason)
    except BadRequest:
        raise ValueError(f"certificate {serial_hex.decode()}: unknown revocation reason {reason!r}") from None


def _time14(digits: bytes) -> bytes:
    if digits < b"2050":
        return b"\x17\x0d" + digits[2:14] + b"Z"
    return b"\x18\x0f" + digits[:14] + b"Z"


def encode_entry(serial_hex: bytes, revoked: bytes, reason: str, invalidity: bytes | None = None) -> bytes:
    """One ``revokedCertificates`` entry (RFC 5280 §5.1.2.6, §5.3).

    ``serial_hex`` is the stored hex serial; ``revoked`` and ``invalidity`` are times as
    ``YYYYMMDDhhmmss`` digits, optionally with the separators SQLite stores
    (``YYYY-MM-DD hh:mm:ss.ffffff``).
    """
    if len(serial_hex) & 1:
        serial_hex = b"0" + serial_hex
    serial = binascii.unhexlify(serial_hex)
    if serial[0] & 0x80:
        serial = b"\x00" + serial
    reason = _stored(reason, serial_hex)
    body = (
        tlv(INTEGER, serial)
        + _time14(revoked.translate(None, _SEPARATORS))
        + _entry_extensions(reason, invalidity)
    )
    return tlv(SEQUENCE, body)


Row = tuple[bytes, bytes, str, bytes | None]


def encode_rows(rows: Iterable[Row]) -> bytes:
    """Encode a batch of ``(serial_hex, revoked, reason, invalidity)`` rows into concatenated entries.

    The same result as ``b"".join(encode_entry(*row) for row in rows)``; the common case (a time
    before 2050, no invalidity date) is inlined because this loop is the CRL build's hot path:
    one bytes formatting per entry, no objects beyond the entry itself.
    """
    unhex = binascii.unhexlify
    extensions = ENTRY_EXTENSIONS
    parts: list[bytes] = []
    append = parts.append
    for serial_hex, revoked, reason, invalidity in rows:
        if len(serial_hex) & 1:
            serial_hex = b"0" + serial_hex
        serial = unhex(serial_hex)
        if serial[0] > 0x7F:
            serial = b"\x00" + serial
        digits = revoked.translate(None, _SEPARATORS)
        ext = extensions.get(reason)
        if ext is None:
            reason = _stored(reason, serial_hex)
            ext = extensions[reason]
        n = len(serial)
        if invalidity is None and digits < b"2050":
            append(b"0%c\x02%c%s\x17\x0d%sZ%s" % (n + 17 + len(ext), n, serial, digits[2:14], ext))
        else:
            ext = _entry_extensions(reason, invalidity)
            time_der = _time14(digits)
            append(b"0%c\x02%c%s%s%s" % (n + 2 + len(time_der) + len(ext), n, serial, time_der, ext))
    return b"".join(parts)
