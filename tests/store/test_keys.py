"""store.keys: content keys are sha256 of bytes; fingerprints are stable over canonical JSON."""

import hashlib

import pytest

from store.errors import StoreMismatchError
from store.keys import canonical_json, content_key, fingerprint, key_to_bytes


def test_content_key_of_file_equals_key_of_bytes(tmp_path):
    data = bytes(range(256)) * 10_000  # 2.5 MB: more than one streamed block
    p = tmp_path / "img.png"
    p.write_bytes(data)
    assert content_key(p) == content_key(str(p)) == content_key(data)
    assert content_key(data) == hashlib.sha256(data).hexdigest()
    assert content_key(data + b"x") != content_key(data)


def test_fingerprint_ignores_key_order_and_whitespace():
    a = {"size": 224, "mean": [0.485, 0.456, 0.406], "nested": {"b": 1, "a": True}}
    b = {"nested": {"a": True, "b": 1}, "mean": [0.485, 0.456, 0.406], "size": 224}
    assert fingerprint(a) == fingerprint(b)
    assert canonical_json(a) == '{"mean":[0.485,0.456,0.406],"nested":{"a":true,"b":1},"size":224}'


def test_fingerprint_changes_with_any_value():
    base = {"size": 224, "interp": "bilinear", "antialias": True}
    fps = {fingerprint(base)}
    for change in ({"size": 256}, {"interp": "bicubic"}, {"antialias": False}, {"extra": None}):
        fps.add(fingerprint({**base, **change}))
    assert len(fps) == 5


def test_fingerprint_floats_are_stable():
    assert fingerprint({"x": 224.0}) == fingerprint({"x": 224})
    assert fingerprint({"x": 0.1 + 0.2}) != fingerprint({"x": 0.3})
    assert fingerprint({"t": (1, 2)}) == fingerprint({"t": [1, 2]})


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}, {1: "a"}, ["not", "dict"]])
def test_fingerprint_rejects_unhashable_specs(bad):
    with pytest.raises(StoreMismatchError):
        fingerprint(bad)


def test_key_to_bytes_validates():
    k = content_key(b"abc")
    assert key_to_bytes(k) == bytes.fromhex(k)
    for bad in ["abc", k.upper(), k[:-1] + "g", 5]:
        with pytest.raises(StoreMismatchError):
            key_to_bytes(bad)
