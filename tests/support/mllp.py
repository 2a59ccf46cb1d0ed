"""A small MLLP client and HL7 v2 message builder for the tests (HL7 v2.5.1 Appendix C.4):
messages built field by field, sent in ``0x0B ... 0x1C 0x0D`` blocks over a real TCP socket,
answers read back and split into segments and fields."""

from __future__ import annotations

import socket
from dataclasses import dataclass

START, END = b"\x0b", b"\x1c\x0d"


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment with ``fields`` at their numbers (``{3: "PAT1^^^HOSP"}`` is PID-3)."""
    if name == "MSH":  # MSH-1 is the separator, MSH-2 the encoding characters
        values = ["MSH", "^~\\&"] + [fields.get(n, "") for n in range(3, max(fields) + 1)]
        return "|".join(values)
    last = max(fields) if fields else 0
    return "|".join([name] + [fields.get(n, "") for n in range(1, last + 1)])


def message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


@dataclass
class Ack:
    """An answer, split: ``field("MSA", 1)`` is MSA-1."""

    text: str

    def segments(self, name: str) -> list[list[str]]:
        return [line.split("|") for line in self.text.split("\r") if line.startswith(name)]

    def field(self, name: str, number: int) -> str:
        (found,) = self.segments(name)[:1] or [[]]
        index = number - 1 if name == "MSH" else number  # MSH-1 is the separator
        return found[index] if len(found) > index else ""

    @property
    def code(self) -> str:
        return self.field("MSA", 1)

    @property
    def reason(self) -> str:
        """MSA-3, unescaped (HL7 v2.5.1 2.7.4)."""
        text = self.field("MSA", 3)
        for code, char in (("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"),
                           ("\\R\\", "~"), ("\\E\\", "\\")):
            text = text.replace(code, char)
        return text


class Connection:
    """One MLLP connection to ``127.0.0.1:port``."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, payload: bytes) -> Ack:
        self.sock.sendall(START + payload + END)
        return self.read()

    def read(self) -> Ack:
        while END not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before an answer (read {self.buffer[:200]!r})")
            self.buffer += chunk
        block, self.buffer = self.buffer.split(END, 1)
        assert block.startswith(START), block[:50]
        return Ack(block[1:].decode("utf-8"))

    def closed_by_peer(self) -> bool:
        """Reads until the server closes (True) or the socket's timeout passes (False)."""
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
