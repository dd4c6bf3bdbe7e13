"""An undo stack bounded by bytes as well as by count.

QUndoStack can only limit the number of commands, and only while it is empty; one command
of a 4096² document can hold hundreds of megabytes, so the editor keeps its own small stack:
after every push the oldest commands are dropped until the stack fits both limits (the
newest command is always kept, however large).
"""

from __future__ import annotations

from typing import Protocol

from PySide6.QtCore import QObject, Signal

DEFAULT_MAX_BYTES = 512 * 1024**2
DEFAULT_MAX_COUNT = 200


class Command(Protocol):
    text: str
    nbytes: int

    def redo(self) -> None: ...
    def undo(self) -> None: ...


class UndoStack(QObject):
    """``commands[:index]`` are done; ``commands[index:]`` can be redone."""

    cleanChanged = Signal(bool)  # noqa: N815 — the names QUndoStack uses
    indexChanged = Signal(int)  # noqa: N815 — after every push, undo and redo

    def __init__(self, parent=None, max_bytes=DEFAULT_MAX_BYTES, max_count=DEFAULT_MAX_COUNT):
        super().__init__(parent)
        self.max_bytes, self.max_count = max_bytes, max_count
        self.commands: list[Command] = []
        self._index = 0
        self._clean = 0  # the index at which the document was saved; -1: unreachable

    # ---- queries (QUndoStack's names) -----------------------------------------------------

    def count(self) -> int:
        return len(self.commands)

    def index(self) -> int:
        return self._index

    def command(self, i: int) -> Command:
        return self.commands[i]

    def isClean(self) -> bool:  # noqa: N802
        return self._index == self._clean

    def canUndo(self) -> bool:  # noqa: N802
        return self._index > 0

    def canRedo(self) -> bool:  # noqa: N802
        return self._index < len(self.commands)

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.commands)

    # ---- changes ------------------------------------------------------------------------

    def push(self, cmd: Command, done: bool = False) -> None:
        """Add ``cmd``, dropping what could be redone; runs ``cmd.redo()`` unless ``done``."""
        was_clean = self.isClean()
        if self._clean > self._index:
            self._clean = -1  # the saved state was in the redo part we are dropping
        del self.commands[self._index :]
        if not done:
            cmd.redo()
        self.commands.append(cmd)
        self._index += 1
        self._evict()
        self._changed(was_clean)

    def undo(self) -> None:
        if self.canUndo():
            was_clean = self.isClean()
            self._index -= 1
            self.commands[self._index].undo()
            self._changed(was_clean)

    def redo(self) -> None:
        if self.canRedo():
            was_clean = self.isClean()
            self.commands[self._index].redo()
            self._index += 1
            self._changed(was_clean)

    def clear(self) -> None:
        was_clean = self.isClean()
        self.commands.clear()
        self._index = self._clean = 0
        self._changed(was_clean)

    def setClean(self) -> None:  # noqa: N802
        was_clean = self.isClean()
        self._clean = self._index
        self._changed(was_clean)

    def _evict(self) -> None:
        total = self.nbytes()
        while len(self.commands) > 1 and (
            len(self.commands) > self.max_count or total > self.max_bytes
        ):
            total -= self.commands.pop(0).nbytes
            self._index -= 1
            self._clean = self._clean - 1 if self._clean > 0 else -1

    def _changed(self, was_clean: bool) -> None:
        if self.isClean() != was_clean:
            self.cleanChanged.emit(self.isClean())
        self.indexChanged.emit(self._index)
