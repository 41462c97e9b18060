#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): small valid inputs
of every format, so that the fuzzers start inside the parsers rather than at their first check.

Standard library only. The HDF5 seeds are written by dijiang itself (a native checkpoint of a
micro model, a training checkpoint, and its one-rank flat checkpoint), so the binary is needed:

    python3 tests/fuzz/make_corpus.py build/dijiang
"""
import collections
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import types
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")

# A GPT-NeoX model small enough that its checkpoints are a few kilobytes: 1 layer, hidden 8,
# 2 heads, vocabulary 16.
MICRO_CONFIG = {
    "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": 16,
    "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
    "max_position_embeddings": 32, "rotary_pct": 0.5, "rotary_emb_base": 10000,
    "layer_norm_eps": 1e-5, "use_parallel_residual": True, "hidden_act": "gelu",
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0,
}


def micro_tensors():
    """The micro model's tensors: name -> (shape, list of floats)."""
    h, f, v = 8, 16, 16
    shapes = {
        "gpt_neox.embed_in.weight": [v, h],
        "gpt_neox.layers.0.input_layernorm.weight": [h],
        "gpt_neox.layers.0.input_layernorm.bias": [h],
        "gpt_neox.layers.0.post_attention_layernorm.weight": [h],
        "gpt_neox.layers.0.post_attention_layernorm.bias": [h],
        "gpt_neox.layers.0.attention.query_key_value.weight": [3 * h, h],
        "gpt_neox.layers.0.attention.query_key_value.bias": [3 * h],
        "gpt_neox.layers.0.attention.dense.weight": [h, h],
        "gpt_neox.layers.0.attention.dense.bias": [h],
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": [f, h],
        "gpt_neox.layers.0.mlp.dense_h_to_4h.bias": [f],
        "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": [h, f],
        "gpt_neox.layers.0.mlp.dense_4h_to_h.bias": [h],
        "gpt_neox.final_layer_norm.weight": [h],
        "gpt_neox.final_layer_norm.bias": [h],
        "embed_out.weight": [v, h],
    }
    out = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        n = 1
        for d in shape:
            n *= d
        ones = name.endswith("layernorm.weight") or name.endswith("final_layer_norm.weight")
        out[name] = (shape, [1.0 if ones else ((j * 7 + i) % 11 - 5) * 0.02 for j in range(n)])
    return out


def safetensors_bytes(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, (shape, values) in sorted(tensors.items()):
        raw = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def torch_bin_bytes(tensors):
    """A torch.save zip archive (format of torch >= 1.6) with a restricted-unpickler state dict,
    pickled with stand-ins for torch's globals so that torch is not needed."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise RuntimeError("never called")

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils

    class Storage:
        def __init__(self, key, count):
            self.key, self.count = key, count

    class Tensor:
        def __init__(self, key, shape, count):
            self.storage, self.shape = Storage(key, count), shape

        def __reduce__(self):
            stride, step = [], 1
            for d in reversed(self.shape):
                stride.insert(0, step)
                step *= d
            return (_rebuild_tensor_v2,
                    (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.count)
            return None

    import io
    state, records = collections.OrderedDict(), {}
    for i, (name, (shape, values)) in enumerate(sorted(tensors.items())):
        state[name] = Tensor(str(i), shape, len(values))
        records["archive/data/%d" % i] = struct.pack("<%df" % len(values), *values)
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
    for key, module in saved.items():
        if module is None:
            del sys.modules[key]
        else:
            sys.modules[key] = module
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for name, raw in records.items():
            archive.writestr(name, raw)
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


def npy_bytes(descr, values):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%d,), }" % (descr, len(values))
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    fmt = {"<u2": "H", "<i4": "i", "<i8": "q", "|u1": "B"}[descr]
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + \
        struct.pack("<%d%s" % (len(values), fmt), *values)


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as out:
        out.write(data if isinstance(data, bytes) else data.encode())


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    dijiang = os.path.abspath(sys.argv[1])
    # Seeds are made again; inputs that once failed (regression-*) stay.
    for target in os.listdir(CORPUS) if os.path.isdir(CORPUS) else []:
        for name in os.listdir(os.path.join(CORPUS, target)):
            if not name.startswith("regression-"):
                os.remove(os.path.join(CORPUS, target, name))
    tensors = micro_tensors()

    write("safetensors", "micro.safetensors", safetensors_bytes(tensors))
    write("safetensors", "empty.safetensors", safetensors_bytes({}))
    write("torch_bin", "micro.bin", torch_bin_bytes(tensors))
    write("npy", "u2.npy", npy_bytes("<u2", [0, 1, 50276, 65535]))
    write("npy", "i4.npy", npy_bytes("<i4", [3, 70000, 5]))
    write("npy", "i8.npy", npy_bytes("<i8", [1, 2]))
    for name in ("docs", "shard2"):
        with open(os.path.join(ROOT, "tests", "fixtures", "indexed", name + ".idx"), "rb") as idx, \
                open(os.path.join(ROOT, "tests", "fixtures", "indexed", name + ".bin"), "rb") as bin_:
            index, data = idx.read(), bin_.read()
        # The first byte puts the split where the index ends (see fuzz_indexed_dataset.cpp).
        split = next(b for b in range(256) if len(index + data) * b // 256 >= len(index))
        rest = index + data
        cut = len(rest) * split // 256
        write("indexed_dataset", name, bytes([split]) + rest[:cut] + rest[cut:])
    write("config_json", "micro.json", json.dumps(MICRO_CONFIG, indent=1))
    for size in ("14m", "1b"):
        shutil.copy(os.path.join(ROOT, "configs", "models", "pythia-%s.json" % size),
                    os.path.join(CORPUS, "config_json", "pythia-%s.json" % size))
    dijiang_config = dict(MICRO_CONFIG, attention="dijiang",
                          dijiang={"sampling": "qmc", "seed": 0, "form": "chunkwise", "chunk": 64})
    write("config_json", "micro-dijiang.json", json.dumps(dijiang_config))
    os.makedirs(os.path.join(CORPUS, "experiment_yaml"), exist_ok=True)
    shutil.copy(os.path.join(ROOT, "configs", "micro", "tiny-dijiang.yaml"),
                os.path.join(CORPUS, "experiment_yaml", "tiny-dijiang.yaml"))
    shutil.copy(os.path.join(ROOT, "configs", "pythia-410m.yaml"),
                os.path.join(CORPUS, "experiment_yaml", "pythia-410m.yaml"))
    tokenizer = {
        "version": "1.0",
        "added_tokens": [{"id": 300, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False,
                  "vocab": None, "merges": ["h e", "l l", "he ll", "hell o"]},
    }
    # The byte-level alphabet of GPT-2 / GPT-NeoX: printable bytes map to themselves, the others
    # to U+0100 onwards, in byte order.
    alphabet, extra = {}, 0
    for b in range(256):
        if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
            alphabet[b] = chr(b)
        else:
            alphabet[b] = chr(256 + extra)
            extra += 1
    vocab = {alphabet[b]: b for b in range(256)}
    for merge in tokenizer["model"]["merges"]:
        vocab[merge.replace(" ", "")] = len(vocab)
    tokenizer["model"]["vocab"] = vocab
    write("tokenizer_json", "bpe.json", json.dumps(tokenizer, ensure_ascii=False))

    # HDF5 seeds, written by dijiang.
    with tempfile.TemporaryDirectory() as work:
        model = os.path.join(work, "micro")
        os.makedirs(model)
        with open(os.path.join(model, "config.json"), "w") as out:
            json.dump(MICRO_CONFIG, out)
        with open(os.path.join(model, "model.safetensors"), "wb") as out:
            out.write(safetensors_bytes(tensors))
        tokens = os.path.join(work, "tokens.npy")
        with open(tokens, "wb") as out:
            out.write(npy_bytes("<u2", [(i * 5) % 16 for i in range(200)]))
        run = lambda *args: subprocess.run([dijiang, "-q", *args], check=True, cwd=work)
        run("convert", "--from", model, "--to", os.path.join(work, "model.h5"))
        run("convert", "--from", model, "--to", os.path.join(work, "model-bf16.h5"), "--dtype", "bf16")
        experiment = os.path.join(work, "micro.yaml")
        with open(experiment, "w") as out:
            out.write("model:\n  source: micro\ndata:\n  train: tokens.npy\n  seq_len: 16\n"
                      "batch:\n  micro_batch: 2\n  grad_accum: 1\nschedule:\n  steps: 1\n  warmup: 1\n"
                      "checkpoint:\n  dir: run\n  every: 1\n")
        run("train", experiment)
        run("convert", "--from", os.path.join(work, "run", "ckpt-00000001.h5"), "--to",
            os.path.join(work, "flat"), "--ranks", "1")
        os.makedirs(os.path.join(CORPUS, "native_checkpoint"), exist_ok=True)
        os.makedirs(os.path.join(CORPUS, "flat_checkpoint"), exist_ok=True)
        shutil.copy(os.path.join(work, "model.h5"), os.path.join(CORPUS, "native_checkpoint", "model.h5"))
        shutil.copy(os.path.join(work, "model-bf16.h5"), os.path.join(CORPUS, "native_checkpoint", "model-bf16.h5"))
        shutil.copy(os.path.join(work, "run", "ckpt-00000001.h5"),
                    os.path.join(CORPUS, "native_checkpoint", "training.h5"))
        shutil.copy(os.path.join(work, "flat", "rank-00000-of-00001.h5"),
                    os.path.join(CORPUS, "flat_checkpoint", "rank-00000-of-00001.h5"))
    for target in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, target))
        size = sum(os.path.getsize(os.path.join(CORPUS, target, f)) for f in files)
        print("%-18s %2d seeds, %7d bytes" % (target, len(files), size))


if __name__ == "__main__":
    main()
