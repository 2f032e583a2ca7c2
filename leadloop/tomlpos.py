"""Where a key sits in a TOML file.

``tomllib`` validates and loads TOML but reports no positions, and neither
does any maintained TOML library, so configuration errors could not name the
line a key is on.  This module is the small hand-written part: a scanner
over text that ``tomllib`` has already accepted, recording the line of every
table header, key and array element, keyed by its path as the loaded data
would spell it (``("cadence", "steps", 2, "delay")``).  It does not validate
anything; it only has to agree with ``tomllib`` on valid input.
"""

from __future__ import annotations

Path = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_lines(text: str) -> dict[Path, int]:
    """Map every key path in *text* to the 1-based line where it appears."""
    return _Scanner(text).scan()


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of *path*, or of its nearest ancestor that has one."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def format_path(path: Path) -> str:
    """``("cadence", "steps", 2, "delay")`` -> ``cadence.steps[2].delay``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.aot_counts: dict[Path, int] = {}

    # -- low level --------------------------------------------------------
    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def advance(self, n: int = 1) -> None:
        chunk = self.text[self.pos : self.pos + n]
        self.line += chunk.count("\n")
        self.pos += n

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_ws(self, newlines: bool = False) -> None:
        while not self.at_end():
            ch = self.peek()
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.advance()
            elif ch == "#":
                while not self.at_end() and self.peek() != "\n":
                    self.advance()
            else:
                return

    def skip_line(self) -> None:
        while not self.at_end() and self.peek() != "\n":
            self.advance()

    def record(self, path: Path, line: int) -> None:
        self.lines.setdefault(path, line)

    # -- grammar ----------------------------------------------------------
    def scan(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_ws(newlines=True)
            if self.at_end():
                return self.lines
            line = self.line
            if self.peek(2) == "[[":
                self.advance(2)
                # [[a.b]] after [[a]] appends to b in the last element of a.
                key = self.read_key()
                name = (*self._resolve_table(key[:-1]), key[-1])
                self.skip_ws()
                self.advance(2)  # ]]
                index = self.aot_counts.get(name, 0)
                self.aot_counts[name] = index + 1
                self.record(name, line)
                table = (*name, index)
                self.record(table, line)
            elif self.peek() == "[":
                self.advance()
                name = self.read_key()
                self.skip_ws()
                self.advance()  # ]
                table = self._resolve_table(name)
                self.record(table, line)
            else:
                key = self.read_key()
                self.skip_ws()
                self.advance()  # =
                self.record((*table, *key), line)
                self.skip_ws()
                self.read_value((*table, *key))
            self.skip_line()

    def _resolve_table(self, name: Path) -> Path:
        # [a.b] after [[a]] refers to the last element of a.
        resolved: list[str | int] = []
        for part in name:
            resolved.append(part)
            count = self.aot_counts.get(tuple(resolved))
            if count:
                resolved.append(count - 1)
        return tuple(resolved)

    def read_key(self) -> Path:
        parts: list[str | int] = []
        while True:
            self.skip_ws()
            ch = self.peek()
            if ch in "\"'":
                parts.append(self.read_string())
            else:
                start = self.pos
                while not self.at_end() and self.peek() in _BARE_KEY_CHARS:
                    self.advance()
                parts.append(self.text[start : self.pos])
            self.skip_ws()
            if self.peek() == ".":
                self.advance()
                continue
            return tuple(parts)

    def read_string(self) -> str:
        quote = self.peek()
        if self.peek(3) == quote * 3:
            self.advance(3)
            end = self.text.find(quote * 3, self.pos)
            while self.text[end + 3 : end + 4] == quote:  # up to two quotes may end it
                end += 1
            value = self.text[self.pos : end]
            self.advance(end + 3 - self.pos)
            return value
        self.advance()
        start = self.pos
        while not self.at_end() and self.peek() != quote:
            if quote == '"' and self.peek() == "\\":
                self.advance()
            self.advance()
        value = self.text[start : self.pos]
        self.advance()
        return value

    def read_value(self, path: Path) -> None:
        ch = self.peek()
        if ch in "\"'":
            self.read_string()
        elif ch == "[":
            self.advance()
            index = 0
            while True:
                self.skip_ws(newlines=True)
                if self.peek() == "]":
                    self.advance()
                    return
                self.record((*path, index), self.line)
                self.read_value((*path, index))
                index += 1
                self.skip_ws(newlines=True)
                if self.peek() == ",":
                    self.advance()
        elif ch == "{":
            self.advance()
            while True:
                self.skip_ws()
                if self.peek() == "}":
                    self.advance()
                    return
                line = self.line
                key = self.read_key()
                self.skip_ws()
                self.advance()  # =
                self.record((*path, *key), line)
                self.skip_ws()
                self.read_value((*path, *key))
                self.skip_ws()
                if self.peek() == ",":
                    self.advance()
        else:
            while not self.at_end() and self.peek() not in ",]}\n#":
                self.advance()
