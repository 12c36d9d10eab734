"""Errors that name the file, the row, the field and the fix."""

from __future__ import annotations

from typing import TypeVar, overload

_E = TypeVar("_E", bound=BaseException)


class ShortcutKDError(Exception):
    """Base class of the toolkit's errors."""


class DataError(ShortcutKDError, ValueError):
    """Bad input data: names the file, the row and the column, and says how to fix it.

    Args:
        message: what is wrong.
        file: the file (CSV, JSON, image) where it was found.
        row: the row number (1-based, header excluded) or sample id, if any.
        column: the column or field name, if any.
        fix: what the user should do about it.
    """

    def __init__(self, message: str, file: str | None = None, row: int | str | None = None,
                 column: str | None = None, fix: str | None = None) -> None:
        self.file, self.row, self.column, self.fix = file, row, column, fix
        where = []
        if file is not None:
            where.append(f"file '{file}'")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        text = (", ".join(where) + ": " if where else "") + message
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)


class ConfigError(ShortcutKDError, ValueError):
    """A bad configuration value: names the key, the value and the allowed choices."""

    def __init__(self, key: str, value: object, fix: str) -> None:
        self.key, self.value = key, value
        super().__init__(f"config key '{key}' has value {value!r}. Fix: {fix}")


@overload
def find_toolkit_error(error: BaseException | None) -> ShortcutKDError | None: ...


@overload
def find_toolkit_error(error: BaseException | None, kind: type[_E]) -> _E | None: ...


def find_toolkit_error(error: BaseException | None, kind: type = ShortcutKDError) -> BaseException | None:
    """The first error of type ``kind`` in ``error``'s ``__cause__`` chain (``error`` itself included).

    MONAI wraps what a transform or a config ``_target_`` raises in a ``RuntimeError``; the toolkit's own
    error inside it names the file, the field and the fix, so that is the one to show.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None
