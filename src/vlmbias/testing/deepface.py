"""Stand-in DeepFace weights: tiny ONNX graphs written byte by byte (no `onnx` package needed) that
DeepFace's onnx engine loads in place of its released models, so the label stage runs offline.

Each model is softmax(mean colour of the face @ W + b). With DeepFace's BGR input in [0, 1]:
- gender ["Woman", "Man"] follows the blue channel (> 0.5: Man),
- race (DeepFace's 6 classes, in its order) the red channel (6 even levels),
- age (101 classes, apparent age = expectation) peaks at 100 x green.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from vlmbias.mitigate.label import DEEPFACE_WEIGHTS

CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_eye.xml")


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _int(field, v):
    return _varint(field << 3) + _varint(v)


def _bytes(field, b):
    return _varint(field << 3 | 2) + _varint(len(b)) + b


def _str(field, s):
    return _bytes(field, s.encode())


def _value_info(name, dims):  # ValueInfoProto{name, TypeProto{tensor_type{elem_type FLOAT, shape}}}
    shape = b"".join(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _str(1, name) + _bytes(2, _bytes(1, _int(1, 1) + _bytes(2, shape)))


def _initializer(name, arr):  # TensorProto{dims, data_type FLOAT, name, raw_data}
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return b"".join(_int(1, d) for d in arr.shape) + _int(2, 1) + _str(8, name) + _bytes(9, arr.tobytes())


def _node(op, inputs, outputs, attrs=b""):
    return b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs) + _str(4, op) + attrs


def colour_model(weight, bias) -> bytes:
    """ONNX ModelProto (opset 13): softmax(ReduceMean over H, W of x (N, 224, 224, 3) @ weight + bias)."""
    attrs = (_bytes(5, _str(1, "axes") + _int(8, 1) + _int(8, 2) + _int(20, 7))        # INTS
             + _bytes(5, _str(1, "keepdims") + _int(3, 0) + _int(20, 2)))              # INT
    graph = (_bytes(1, _node("ReduceMean", ["x"], ["m"], attrs)) + _bytes(1, _node("MatMul", ["m", "w"], ["z"]))
             + _bytes(1, _node("Add", ["z", "b"], ["l"])) + _bytes(1, _node("Softmax", ["l"], ["y"]))
             + _str(2, "standin") + _bytes(5, _initializer("w", weight)) + _bytes(5, _initializer("b", bias))
             + _bytes(11, _value_info("x", ["N", 224, 224, 3])) + _bytes(12, _value_info("y", ["N", weight.shape[1]])))
    return _int(1, 7) + _bytes(8, _str(1, "") + _int(2, 13)) + _bytes(7, graph)


def standin_weights() -> dict[str, bytes]:
    b, g, r = np.eye(3, dtype=np.float32)  # rows of W that read one BGR channel mean
    gender = colour_model(np.stack([-50 * b, 50 * b], 1), np.array([25, -25]))
    # -s (x - c)^2 = 2 s c x - s c^2 + (a term equal for every class): linear, so MatMul + Add suffice
    levels = (np.arange(6) + 0.5) / 6
    race = colour_model(np.outer(r, 2 * 2000 * levels), -2000 * levels ** 2)
    ages = np.arange(101) / 100
    age = colour_model(np.outer(g, 2 * 20000 * ages), -20000 * ages ** 2)
    return {DEEPFACE_WEIGHTS["Gender"]: gender, DEEPFACE_WEIGHTS["Race"]: race, DEEPFACE_WEIGHTS["Age"]: age}




def make_deepface_home(home: str | Path) -> Path:
    """A DEEPFACE_HOME folder (`<home>/.deepface/weights/`) with the stand-in weights. OpenCV's face
    detector reads its Haar cascades from the OpenCV wheel (`cv2/data/`) when the wheel ships them,
    else from this folder: the wheel's real cascades are copied here too when present."""
    import cv2

    weights = Path(home) / ".deepface" / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    for name, data in standin_weights().items():
        (weights / name).write_bytes(data)
    wheel = Path(os.path.dirname(cv2.__file__)) / "data"
    for name in CASCADES:
        if (wheel / name).is_file():
            shutil.copyfile(wheel / name, weights / name)
    return Path(home)
