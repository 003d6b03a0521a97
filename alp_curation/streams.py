"""The bytes of input files: decompression that notices a damaged stream, lines in bounded memory.

Beam's compressed-file reader stops at the end of the bytes without checking that the compressed
stream ended, so a ``.jsonl.gz`` cut short (even exactly at a line boundary) reads as a shorter,
valid file; and it decompresses in large reads, so the lines decoded just before a corrupt block
are lost with it. `CheckedReader` decompresses itself and raises `StreamDamaged` when the input
ends inside a stream or a stream is corrupt, after delivering every byte that decoded before the
damage. A damaged file is then one dead letter naming where it broke, and its good lines stay.

- `compression_of(path)`: the compression a file name says, as Beam reads it by extension.
- `CheckedReader(raw, compression)`: a binary reader of the decompressed bytes.
- `RawLine`, `iter_lines`: a stream's lines, a leading UTF-8 byte-order mark dropped, each line
  held whole only up to a limit (beyond it: its head, length and SHA-256).
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

__all__ = [
    "BOM",
    "COMPRESSIONS",
    "CheckedReader",
    "RawLine",
    "StreamDamaged",
    "compression_of",
    "iter_lines",
    "open_checked",
]

BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark; some editors start a file with it
READ_CHUNK_BYTES = 1 << 20
KEEP_BYTES = 4096  # bytes of a too-long line kept for its dead letter
# Compressed bytes decoded per call. A decoder that cannot be copied loses what its failing call
# decoded, so it gets smaller pieces.
PIECE_BYTES = 1 << 16
UNCOPYABLE_PIECE_BYTES = 1 << 13

# Extension -> compression, the suffixes Beam's CompressionTypes.AUTO recognises.
_SUFFIXES = {
    ".gz": "gzip",
    ".bz2": "bzip2",
    ".xz": "lzma",
    ".lzma": "lzma",
    ".zst": "zstd",
    ".zstd": "zstd",
    ".deflate": "deflate",
}


def _zstd() -> Any:
    import zstandard  # a dependency of apache-beam; imported only for .zst files

    # Beam's window limit: frames written with --long need more than zstd's default allows.
    return zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj()


# Compression -> (new decompressor, whether it can be copied). Each decompressor has
# decompress(), eof and unused_data. "deflate" is zlib-wrapped DEFLATE, as Beam writes it.
COMPRESSIONS: dict[str, tuple[Callable[[], Any], bool]] = {
    "gzip": (lambda: zlib.decompressobj(zlib.MAX_WBITS | 16), True),
    "deflate": (zlib.decompressobj, True),
    "bzip2": (bz2.BZ2Decompressor, False),
    "lzma": (lzma.LZMADecompressor, False),
    "zstd": (_zstd, False),
}


def _decoder_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [zlib.error, OSError, lzma.LZMAError, EOFError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard comes with apache-beam
        pass
    return tuple(errors)


class StreamDamaged(ValueError):
    """A compressed stream that ends before its end-of-stream marker, or is corrupt.

    Everything that decoded before the damage has been delivered. ``offset`` is the compressed
    byte where the damage was found.
    """

    def __init__(self, source: str, message: str, offset: int) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source
        self.message = message
        self.offset = offset

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through self.args (the text alone); keep every attribute.
        return (StreamDamaged, (self.source, self.message, self.offset))


def compression_of(path: str) -> str | None:
    """The compression of a file by its name (".gz" -> "gzip"), None for an uncompressed one."""
    lowered = path.lower()
    for suffix, compression in _SUFFIXES.items():
        if lowered.endswith(suffix):
            return compression
    return None


class CheckedReader(io.RawIOBase):
    """The decompressed bytes of ``raw``; `StreamDamaged` where the compressed data breaks.

    Concatenated streams (``cat a.gz b.gz``) read as one, and zero bytes after a stream are
    padding (as gzip and xz allow). Raised: an input that holds no stream at all, ends inside a
    stream (cut short), or holds bytes that are not a valid stream; the error comes only after
    every byte decoded before the damage has been read. zlib's decoders can be copied, so a
    corrupt gzip or deflate piece is replayed byte by byte from the copy to deliver all output
    up to the exact byte; the others lose at most what their last piece decoded.
    """

    def __init__(
        self, raw: BinaryIO, compression: str, *, source: str = "", piece_bytes: int | None = None
    ) -> None:
        super().__init__()
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r}: expected one of {list(COMPRESSIONS)}")
        self._raw = raw
        self.compression = compression
        self._new, self._copyable = COMPRESSIONS[compression]
        self._errors = _decoder_errors()
        self._source = source
        default = PIECE_BYTES if self._copyable else UNCOPYABLE_PIECE_BYTES
        self._piece_bytes = piece_bytes or default
        self._decoder: Any = None  # None between streams
        self._streams = 0
        self._fed = 0  # compressed bytes handed to decoders (or skipped as padding)
        self._out = bytearray()
        self._damage: StreamDamaged | None = None
        self._at_end = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._out and not self._at_end and self._damage is None:
            self._fill()
        if not self._out:
            if self._damage is not None:
                raise self._damage
            return 0
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        del self._out[:n]
        return n

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(READ_CHUNK_BYTES):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()

    def _damaged(self, message: str, offset: int) -> None:
        self._damage = StreamDamaged(self._source, message, offset)

    def _fill(self) -> None:
        data = self._raw.read(self._piece_bytes)
        if not data:
            self._at_end = True
            if self._streams == 0:
                self._damaged(f"no {self.compression} stream in it ({self._fed} bytes)", self._fed)
            elif self._decoder is not None:
                self._damaged(
                    f"cut short: it ends at byte {self._fed} inside {self.compression} stream "
                    f"{self._streams}, before its end-of-stream marker",
                    self._fed,
                )
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        while data and self._damage is None:
            if self._decoder is None:
                if self._streams:  # after a complete stream: zero padding, or another stream
                    stripped = data.lstrip(b"\0")
                    self._fed += len(data) - len(stripped)
                    data = stripped
                    if not data:
                        return
                self._decoder = self._new()
                self._streams += 1
            start = self._fed
            self._out += self._decode(data)
            if self._damage is not None or not self._decoder.eof:
                self._fed = start + len(data)
                return
            rest = self._decoder.unused_data
            self._fed = start + len(data) - len(rest)
            self._decoder = None
            data = rest

    def _decode(self, data: bytes) -> bytes:
        backup = self._decoder.copy() if self._copyable else None
        try:
            return bytes(self._decoder.decompress(data))
        except self._errors as exc:
            decoded, offset = b"", self._fed
            if backup is not None:  # replay from the copy up to the failing byte
                parts: list[bytes] = []
                for i in range(len(data)):
                    try:
                        parts.append(backup.decompress(data[i : i + 1]))
                    except self._errors:
                        offset = self._fed + i
                        break
                decoded = b"".join(parts)
            where = (
                f"at byte {offset}"
                if backup is not None
                else f"in bytes {self._fed}-{self._fed + len(data)}"
            )
            note = ""
            if "check" in str(exc):  # zlib's CRC-32 / Adler-32 / length check at a stream's end
                note = "; the check at the end of the stream failed: bytes before may be damaged"
            self._damaged(
                f"corrupt {where} ({self.compression} stream {self._streams}): {exc}{note}",
                offset,
            )
            return decoded


def open_checked(raw: BinaryIO, path: str) -> BinaryIO:
    """``raw`` (the file's bytes as stored) decompressed by ``path``'s extension, checked.

    Not buffered on purpose: a buffered reader drops the bytes it gathered for a read when the
    raw reader raises, and those are the lines before the damage. Reads may return fewer bytes
    than asked.
    """
    compression = compression_of(path)
    if compression is None:
        return raw
    return CheckedReader(raw, compression, source=path)  # type: ignore[return-value]


@dataclass(frozen=True)
class RawLine:
    """One line of an input file, newline stripped (a "\\r" before it is kept, as JSON allows).

    ``data`` is the whole line, or only its first KEEP_BYTES when ``truncated`` (the line was
    longer than the limit); ``n_bytes`` and ``sha256`` always describe the whole line. A UTF-8
    byte-order mark at the start of the file is not part of line 1.
    """

    source: str
    number: int  # 1-based line number in source
    data: bytes
    n_bytes: int
    truncated: bool = False
    truncated_sha256: str = ""  # of the whole line, when only its head is kept

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the whole line; hashed only when asked (dead letters)."""
        return self.truncated_sha256 or hashlib.sha256(self.data).hexdigest()


def _chunks(f: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """``f``'s bytes in chunks, without a leading byte-order mark (however the reads split it)."""
    head = b""
    while len(head) < len(BOM) and (chunk := f.read(chunk_bytes)):
        head += chunk
    if head.startswith(BOM):
        head = head[len(BOM) :]
    if head:
        yield head
    while chunk := f.read(chunk_bytes):
        yield chunk


def iter_lines(
    f: BinaryIO,
    source: str,
    *,
    max_line_bytes: int,
    keep_bytes: int = KEEP_BYTES,
    chunk_bytes: int = READ_CHUNK_BYTES,
) -> Iterator[RawLine]:
    """Every line of ``f``, blank ones included, holding at most ~max_line_bytes + chunk in memory.

    A line is kept whole while it fits in ``max_line_bytes``; past that only its first
    ``keep_bytes`` are kept and the rest is hashed as it streams by. An exception from ``f``
    (`StreamDamaged`) passes through after the lines completed before it; the line it cut is
    not yielded.
    """
    number = 0
    parts: list[bytes] = []
    size = 0
    hasher = None  # set once the current line is known to be too long
    head = b""

    def done() -> RawLine:
        if hasher is None:
            data = b"".join(parts)
            return RawLine(source, number, data, size)
        return RawLine(source, number, head, size, True, hasher.hexdigest())

    for chunk in _chunks(f, chunk_bytes):
        pos = 0
        while pos <= len(chunk):
            newline = chunk.find(b"\n", pos)
            piece = chunk[pos:] if newline < 0 else chunk[pos:newline]
            size += len(piece)
            if hasher is not None:
                hasher.update(piece)
            else:
                parts.append(piece)
                if size > max_line_bytes:
                    whole = b"".join(parts)
                    head, hasher, parts = whole[:keep_bytes], hashlib.sha256(whole), []
            if newline < 0:
                break
            number += 1
            yield done()
            parts, size, hasher, head = [], 0, None, b""
            pos = newline + 1
    if size:  # a last line without a newline
        number += 1
        yield done()
