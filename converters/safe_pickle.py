"""Load an untrusted pickle (the refer toolkit's refs(*).p) admitting only plain data.

Never plain pickle.load: a pickle can name any importable callable. This unpickler resolves no global
except the builtin container types, so only dicts, lists, tuples, sets, strings, bytes, numbers,
booleans and None come out. Python 2 pickles load too: their byte strings are decoded as UTF-8
(latin-1 when that fails).
"""
from __future__ import annotations

import io
import pickle

_ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("builtins", "dict"), ("builtins", "list"),
            ("builtins", "tuple"), ("__builtin__", "set"), ("__builtin__", "frozenset")}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only plain containers, strings and "
                                     "numbers are admitted")


def _decode(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode(v) for v in value)
    return value


def load_plain_pickle(data: bytes):
    return _decode(_PlainDataUnpickler(io.BytesIO(data), encoding="bytes").load())
