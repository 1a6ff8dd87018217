"""The base of every report record: strict when prunekit writes it, tolerant when `prunekit report` reads it.

- Writing (constructing a record, or `parse` of a file prunekit wrote itself) is strict: every field must be given
  (except the few in `optional`, which are then left out of the file), with its declared JSON type, and no unknown
  key is accepted, so a bug in a writer fails loudly instead of writing a different file. Numbers are kept exactly
  as given (an int stays an int, an infinite perplexity stays infinite), so the JSON is byte for byte what the
  writers wrote before the schema existed.
- Reading (`read`) is tolerant, for reports from older versions, partial runs and hand edits: a missing key, or a
  value of the wrong type (a string where a number belongs, a list where an object does), counts as missing and
  gets the field's default; a list or mapping keeps the items that are well formed; unknown keys (a newer
  version's) are ignored. A number read is a finite float or None. Reading a JSON object never fails.

The format version of a top-level record (`version_key`) is not a field: `to_json` writes it first, and the reader
checks it before the record is read (an unknown version is an error, not a tolerated value).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainValidator,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_serializer,
    model_validator,
)

READING = {"prunekit_reading": True}  # the validation context of `read`
T = TypeVar("T")


def _reading(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("prunekit_reading"))


# --- what a value read from a file counts as ------------------------------------------------------------------------

def number(value: Any) -> float | None:
    """A finite float, or None for null, missing, NaN or anything non-numeric (a report may hold any of these)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return value if math.isfinite(value) else None


def integer(value: Any) -> int | None:
    """A count read from a file: a finite number, truncated to an int; None otherwise."""
    value = number(value)
    return int(value) if value is not None else None


def text(value: Any) -> str | None:
    """A name read from a file: the string, None when absent or empty; a number or other scalar is shown as its
    JSON text; an object or array is no name."""
    if value is None or value == "" or isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scalar(read: Callable[[Any], Any], written: Callable[[Any], bool], what: str) -> PlainValidator:
    """A field that is `read` from a file, and must satisfy `written` (or be None) when a writer gives it."""
    def validate(value: Any, info: ValidationInfo) -> Any:
        if _reading(info):
            return read(value)
        if value is None or written(value):
            return value  # exactly as given: 3 stays 3, inf stays inf
        raise ValueError(f"expected {what}, got {type(value).__name__}")
    return PlainValidator(validate)


Number = Annotated[float | None, _scalar(number, _is_number, "a number")]
Integer = Annotated[int | None, _scalar(integer, _is_integer, "an integer")]
Text = Annotated[str | None, _scalar(text, lambda v: isinstance(v, str), "a string")]
# Free text shown as is: whatever a note holds is shown as its text (a report's notes are for people).
Note = Annotated[str, _scalar(str, lambda v: isinstance(v, str), "a string")]
# A failed sweep point's message: any non-empty value marks the point failed and is shown as text.
Message = Annotated[str | None, _scalar(lambda v: str(v) if v else None, lambda v: isinstance(v, str), "a string")]


def _items(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    if not _reading(info):
        return handler(value)
    if not isinstance(value, list):
        return []
    kept = []
    for item in value:  # one at a time, so one bad item costs only itself
        try:
            kept += handler([item])
        except ValidationError:
            pass
    return kept


def _entries(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    if not _reading(info):
        return handler(value)
    if not isinstance(value, dict):
        return {}
    kept = {}
    for key, item in value.items():
        try:
            kept.update(handler({key: item}))
        except ValidationError:
            pass
    return kept


Items = Annotated[list[T], WrapValidator(_items)]  # a list; when reading, the well-formed items of it
Entries = Annotated[dict[str, T], WrapValidator(_entries)]  # a mapping; when reading, its well-formed entries


class Record(BaseModel):
    """A JSON object of a report: strict when written, tolerant when read (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    optional: ClassVar[frozenset[str]] = frozenset()  # left out of the file when a writer does not give them
    version_key: ClassVar[str | None] = None  # the format version key written first, for top-level records
    version: ClassVar[int] = 1

    @model_validator(mode="before")
    @classmethod
    def _ignore_unknown_keys_when_reading(cls, data: Any, info: ValidationInfo) -> Any:
        if _reading(info) and isinstance(data, dict) and cls.model_config.get("extra") != "allow":
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data

    @field_validator("*", mode="wrap")
    @classmethod
    def _wrong_type_is_missing_when_reading(cls, value: Any, handler: ValidatorFunctionWrapHandler,
                                            info: ValidationInfo) -> Any:
        try:
            return handler(value)
        except ValidationError:
            field = cls.model_fields[info.field_name] if info.field_name else None
            if not _reading(info) or field is None or field.is_required():
                raise
            return field.get_default(call_default_factory=True)

    @model_validator(mode="after")
    def _complete_when_written(self, info: ValidationInfo) -> Self:
        if not _reading(info):
            missing = sorted(set(type(self).model_fields) - self.model_fields_set - self.optional)
            if missing:
                raise ValueError(f"{type(self).__name__} needs {', '.join(missing)}")
        return self

    @model_serializer(mode="wrap")
    def _leave_out_optional(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self.optional - self.model_fields_set:
            data.pop(name, None)
        return data

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Self:
        """A record from a file prunekit wrote (strict: what a writer could have built)."""
        return cls.model_validate(cls._without_version(data))

    @classmethod
    def read(cls, data: Mapping[str, Any]) -> Self:
        """A record from any JSON object, tolerantly (the caller checks the format version first)."""
        return cls.model_validate(cls._without_version(data), context=READING)

    @classmethod
    def _without_version(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k != cls.version_key}

    def to_json(self) -> dict[str, Any]:
        """The JSON object as written (numbers exactly as given; Python floats, so json.dumps keeps inf/NaN)."""
        data = self.model_dump()
        return {self.version_key: self.version, **data} if self.version_key else data
