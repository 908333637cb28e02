#!/usr/bin/python3
"""Regenerate tests/data/megatron_tiny.{bin,idx} following Megatron-LM's MMapIndexedDatasetBuilder
(megatron/data/indexed_dataset.py): add_item writes each document's tokens in the builder dtype,
end_document appends to doc_idx, finalize writes the index with _Index.writer. Document mode with
--append-eod (EOD = 0); vocab < 65500 so best_fitting_dtype picks uint16 (code 8)."""
import os
import struct
import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}
HDR_MAGIC = b"MMIDIDX\x00\x00"


def code(dtype):
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    raise ValueError(dtype)


def build(prefix, documents, dtype=np.uint16):
    sizes, doc_idx = [], [0]
    with open(prefix + ".bin", "wb") as data_file:  # builder.add_item / end_document
        for doc in documents:
            arr = np.array(doc, dtype=dtype)
            data_file.write(arr.tobytes(order="C"))
            sizes.append(arr.size)
            doc_idx.append(len(sizes))
    with open(prefix + ".idx", "wb") as f:  # _Index.writer
        f.write(HDR_MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code(dtype)))
        pointers, address = [], 0  # _get_pointers
        for size in sizes:
            pointers.append(address)
            address += size * np.dtype(dtype).itemsize
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(np.array(sizes, dtype=np.int32).tobytes(order="C"))
        f.write(np.array(pointers, dtype=np.int64).tobytes(order="C"))
        f.write(np.array(doc_idx, dtype=np.int64).tobytes(order="C"))


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
    docs = [[11, 12, 13, 14], [21, 22], [31, 32, 33, 34, 35, 36]]
    build(os.path.join(out, "megatron_tiny"), [d + [0] for d in docs])
