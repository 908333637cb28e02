#!/usr/bin/python3
"""Regenerate the tiny NumPy fixtures read by tests/test_io.c (npy_*.npy in tests/data).
Made by numpy itself so the reader is checked against the real writer, not our idea of it."""
import os
import numpy as np
from numpy.lib import format as npf

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
os.makedirs(out, exist_ok=True)
p = lambda name: os.path.join(out, name)

np.save(p("npy_f32_2x3.npy"), (np.arange(6, dtype=np.float32) * 0.5 - 1).reshape(2, 3))
np.save(p("npy_i64_5.npy"), np.array([0, 2, 1, 2, 0], dtype=np.int64))
np.save(p("npy_bool_3.npy"), np.array([True, False, True]))
np.save(p("npy_f64_scalar.npy"), np.float64(2.5))
np.save(p("npy_fortran_2x2.npy"), np.asfortranarray(np.arange(4, dtype=np.float32).reshape(2, 2)))
with open(p("npy_u1_v2.npy"), "wb") as f:  # format version 2.0 (4-byte header length)
    npf.write_array(f, np.array([1, 2, 255], dtype=np.uint8), version=(2, 0))
