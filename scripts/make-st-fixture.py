#!/usr/bin/env python3
"""Regenerate tests/data/reference.safetensors with the reference implementation
(pip install safetensors numpy), so the reader is checked against files it did not write."""
import os
import numpy as np
from safetensors.numpy import save_file

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
save_file({
    "w": (np.arange(6, dtype=np.float32) - 2).reshape(2, 3),
    "h": np.array([1.5, -2.0], dtype=np.float16),
    "ids": np.array([7, -8, 9], dtype=np.int64),
    "mask": np.array([True, False]),
    "scalar": np.array(3.25, dtype=np.float64),
    "empty": np.zeros((0, 4), dtype=np.int32),
}, os.path.join(out, "reference.safetensors"), metadata={"format": "np", "step": "12"})
