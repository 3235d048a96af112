"""Typed bodies: models in and out of message payloads (DESIGN.md §11, docs/services.md).

A *model* is what a typed handler takes and returns, a typed request sends and reads
back, and a ``subscribe(..., model=...)`` decodes:

- a pydantic v2 ``BaseModel`` subclass (``pip install 'asyncipc[pydantic]'``);
- a msgspec ``Struct`` subclass (``pip install 'asyncipc[msgspec]'``);
- a dataclass, or a plain type (``dict``, ``list[int]``, ``str``...): through msgspec when
  it is installed (validated against the annotation), else the standard ``json`` module
  (a dataclass is built from the decoded object; plain types are not checked).

On the wire a body is JSON unless msgpack was asked for; the ``content-type`` header says
which (``application/json`` or ``application/msgpack``) and the receiver decodes by it. A
message with no ``content-type`` is read as JSON, so a bytes client that sends JSON (the
``asyncipc request`` command, the REST adapter) can call a typed service. msgpack is
msgspec's for every kind of model (a pydantic model goes through ``model_dump(mode=
"json")``): one dependency for both formats rather than a second package.

Nothing here is imported by the bytes path; ``client.py`` reaches it only when a caller
passed something that is not ``bytes`` or asked for a model.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Final

from .errors import ConfigurationError, InvalidBody

__all__ = [
    "CONTENT_TYPE_HEADER",
    "JSON",
    "MSGPACK",
    "Codec",
    "codec_for",
    "content_type_of",
    "encode",
    "encoding_content_type",
    "is_model_type",
    "is_model_value",
    "schema_of",
]

CONTENT_TYPE_HEADER: Final = "content-type"
"""The header that names a typed body's format (docs/protocol.md)."""
JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"

_ENCODINGS = {"json": JSON, "msgpack": MSGPACK, JSON: JSON, MSGPACK: MSGPACK}


def encoding_content_type(encoding: str) -> str:
    """The content type for ``encoding`` (``"json"``, ``"msgpack"`` or a content type)."""
    ctype = _ENCODINGS.get(encoding)
    if ctype is None:
        raise ConfigurationError(f"encoding must be 'json' or 'msgpack', not {encoding!r}")
    return ctype


def content_type_of(headers: dict[str, str] | None) -> str:
    """The content type a message declares; JSON when it declares none."""
    if not headers:
        return JSON
    ctype = headers.get(CONTENT_TYPE_HEADER)
    if ctype is None:
        return JSON
    # "application/json; charset=utf-8" is JSON too.
    return ctype.split(";", 1)[0].strip().lower()


# --- the optional libraries -----------------------------------------------------------------


@functools.cache
def _pydantic() -> Any:
    try:
        import pydantic
    except ImportError:  # pragma: no cover - only without the extra
        return None
    return pydantic


@functools.cache
def _msgspec() -> Any:
    try:
        import msgspec
    except ImportError:  # pragma: no cover - only without the extra
        return None
    return msgspec


def _need_msgspec(what: str) -> Any:
    msgspec = _msgspec()
    if msgspec is None:
        raise ConfigurationError(f"{what} needs msgspec: pip install 'asyncipc[msgspec]'")
    return msgspec


def _is_pydantic(tp: Any) -> bool:
    pydantic = _pydantic()
    return pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _is_struct(tp: Any) -> bool:
    msgspec = _msgspec()
    return msgspec is not None and isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def is_model_type(tp: Any) -> bool:
    """True if ``tp`` is an annotation this module decodes to (not ``bytes``, not a
    :class:`~asyncipc.Message`, not missing)."""
    if tp is inspect.Parameter.empty or tp is None or tp is Any or tp is object:
        return False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        # bytes | None, Message | None: not models; Price | None is one.
        return any(is_model_type(arg) for arg in typing.get_args(tp) if arg is not type(None))
    if isinstance(tp, type) and issubclass(tp, (bytes, bytearray, memoryview)):
        return False
    from .message import Message

    return not (isinstance(tp, type) and issubclass(tp, Message))


def is_model_value(obj: Any) -> bool:
    """True if ``obj`` is a body :func:`encode` turns into bytes on ``publish`` and
    ``request``: a pydantic model, a msgspec struct, a dataclass instance, a dict, list or
    tuple. Anything else (``bytes``, ``str``, numbers) keeps the bytes API's rules."""
    if isinstance(obj, (dict, list, tuple)):
        return True
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return True
    pydantic = _pydantic()
    if pydantic is not None and isinstance(obj, pydantic.BaseModel):
        return True
    msgspec = _msgspec()
    return msgspec is not None and isinstance(obj, msgspec.Struct)


# --- encoding -------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-able Python objects (for stdlib json and msgpack of pydantic)."""
    pydantic = _pydantic()
    if pydantic is not None and isinstance(obj, pydantic.BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def encode(obj: Any, content_type: str = JSON) -> bytes:
    """``obj`` (a model instance, dataclass, dict, list, str, number...) as a body."""
    msgspec = _msgspec()
    pydantic = _pydantic()
    try:
        if content_type == MSGPACK:
            msgspec = _need_msgspec("msgpack")
            if pydantic is not None and isinstance(obj, pydantic.BaseModel):
                obj = obj.model_dump(mode="json")
            return bytes(msgspec.msgpack.encode(obj))
        if content_type != JSON:
            raise ConfigurationError(f"cannot encode to content-type {content_type!r}")
        if pydantic is not None and isinstance(obj, pydantic.BaseModel):
            return bytes(obj.model_dump_json().encode())
        if msgspec is not None:
            return bytes(msgspec.json.encode(obj))
        return json.dumps(_plain(obj), separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise TypeError(f"cannot encode {type(obj).__name__} as {content_type}: {exc}") from exc


# --- decoding -------------------------------------------------------------------------------


def _pydantic_problem(exc: Any) -> str:
    """A pydantic ValidationError in one line, each problem led by its field path."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(body)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _msgspec_problem(exc: Exception) -> str:
    """msgspec says "Expected `int`, got `str` - at `$.qty`": lead with the field."""
    text = str(exc)
    head, sep, where = text.rpartition(" - at `")
    path = where[:-1].removeprefix("$").removeprefix(".") if sep and where.endswith("`") else ""
    if not sep:
        head = text
    missing = _MISSING_RE.fullmatch(head)
    if missing:  # the field is in the words, not in the path: lead with it all the same
        field = missing.group(1)
        return f"{path + '.' if path else ''}{field}: required field missing"
    return f"{path or '(body)'}: {head}"


_MISSING_RE = re.compile(r"Object missing required field `([^`]+)`")


class Codec:
    """Decodes bodies into one model type (and says what that type's JSON schema is)."""

    __slots__ = ("_from_json", "_from_obj", "model", "name")

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = getattr(model, "__name__", repr(model))
        msgspec = _msgspec()
        if _is_pydantic(model):
            adapter = model
            self._from_json: Callable[[bytes], Any] = adapter.model_validate_json
            self._from_obj: Callable[[Any], Any] = adapter.model_validate
        elif msgspec is not None:
            json_decoder = msgspec.json.Decoder(model)
            self._from_json = json_decoder.decode
            self._from_obj = lambda obj: msgspec.convert(obj, model)
        elif dataclasses.is_dataclass(model) and isinstance(model, type):
            dc = model
            self._from_json = lambda data: dc(**json.loads(data))
            self._from_obj = lambda obj: dc(**obj)
        else:
            self._from_json = json.loads
            self._from_obj = lambda obj: obj

    def decode(self, data: bytes, content_type: str = JSON) -> Any:
        """``data`` as the model; :class:`~asyncipc.InvalidBody` naming the field when it
        does not validate, or when ``content_type`` is not one this module reads."""
        pydantic = _pydantic()
        msgspec = _msgspec()
        try:
            if content_type == JSON:
                return self._from_json(data)
            if content_type == MSGPACK:
                if msgspec is None:
                    raise InvalidBody(
                        "a msgpack body cannot be read here: msgspec is not installed"
                    )
                return self._from_obj(msgspec.msgpack.decode(data))
        except InvalidBody:
            raise
        except Exception as exc:
            if pydantic is not None and isinstance(exc, pydantic.ValidationError):
                raise InvalidBody(_pydantic_problem(exc)) from None
            if msgspec is not None and isinstance(exc, msgspec.ValidationError):
                raise InvalidBody(_msgspec_problem(exc)) from None
            if msgspec is not None and isinstance(exc, msgspec.DecodeError):
                raise InvalidBody(f"not valid {content_type.split('/')[-1]}: {exc}") from None
            if isinstance(exc, (ValueError, TypeError)):
                raise InvalidBody(f"{type(exc).__name__}: {exc}") from None
            raise
        raise InvalidBody(
            f"unsupported content-type {content_type!r} (expected {JSON!r} or {MSGPACK!r})"
        )

    def schema(self) -> dict[str, Any] | None:
        """The model's JSON schema (pydantic's or msgspec's), or ``None``."""
        return schema_of(self.model)


_codecs: dict[Any, Codec] = {}


def codec_for(model: Any) -> Codec:
    """The (cached) :class:`Codec` of ``model``."""
    codec = _codecs.get(model)
    if codec is None:
        codec = _codecs[model] = Codec(model)
    return codec


def schema_of(model: Any) -> dict[str, Any] | None:
    """The JSON schema of ``model`` when a library can tell it, else ``None``."""
    if model is None or not is_model_type(model):
        return None
    try:
        if _is_pydantic(model):
            return dict(model.model_json_schema())
        msgspec = _msgspec()
        if msgspec is not None:
            return dict(msgspec.json.schema(model))
    except Exception:  # a type a library cannot describe: no schema, not a failure
        return None
    return None


# --- handlers -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Signature:
    """What a handler's annotations ask for: the request model (``None``: the handler is
    given the :class:`~asyncipc.Message`, as a bytes handler), the reply model (``None``:
    not declared, or ``bytes``), and whether the Message is passed too, as a second
    argument of a typed handler."""

    request: Any
    response: Any
    with_message: bool


def signature_of(fn: Callable[..., Any]) -> Signature:
    """Read ``fn``'s annotations (``async def f(q: Quote) -> Price``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return Signature(None, None, False)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: treat it as absent
        hints = {}
    params = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params:
        return Signature(None, None, False)
    request = hints.get(params[0].name, inspect.Parameter.empty)
    response = hints.get("return")
    if response is type(None) or not is_model_type(response):
        response = None
    if not is_model_type(request):
        # A bytes handler (it gets the Message) whose replies may still be models.
        return Signature(None, response, False)
    return Signature(request, response, len(params) > 1)
