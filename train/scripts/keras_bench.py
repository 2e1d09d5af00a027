#!/usr/bin/env python3
"""The reference figure for `delphi-train bench --compare`: Keras/TensorFlow
CPU training and inference images/s on the same networks, batch, optimizer
rule and data as `delphi-train bench`, on this machine.

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu==2.21.0
    /tmp/tf/bin/python train/scripts/keras_bench.py --out results/bench/train-keras.json

(or `train/scripts/compare-keras.sh`, which runs both sides one after the
other). Each network is the Keras twin of the built-in one (same layers,
channels, padding, bias and batch norm; NHWC, TensorFlow's native CPU
layout). Training is `model.fit` over `--train-images` images in batches of
`--batch-size` with SGD (momentum 0.9, weight decay 5e-4) and cross-entropy,
as a user would write it; the first epoch (graph tracing, warm-up) is not
timed, the next `--rounds` are and the fastest is kept. Inference is
`model.predict` in batches of the same size, likewise. small-cnn trains on Fashion-MNIST
when the files are found (Debian's dataset-fashion-mnist), else on random
images; the 32x32x3 networks on random images (throughput does not depend on
the pixels).
"""

import argparse
import gzip
import json
import os
import platform
import struct
import time

import numpy as np


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fashion(n, data_dir):
    path = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
    lpath = os.path.join(data_dir, "train-labels-idx1-ubyte.gz")
    if not (os.path.exists(path) and os.path.exists(lpath)):
        return None
    with gzip.open(path) as f:
        _, count, h, w = struct.unpack(">IIII", f.read(16))
        x = np.frombuffer(f.read(), np.uint8).reshape(count, h, w, 1)[:n]
    with gzip.open(lpath) as f:
        f.read(8)
        y = np.frombuffer(f.read(), np.uint8)[:n]
    x = ((x.astype(np.float32) / 255.0) - 0.2860) / 0.3530
    return x, y.astype(np.int64)


def build(arch, keras):
    L = keras.layers

    def conv(x, c, k, stride=1, bias=True, padding="same"):
        return L.Conv2D(c, k, strides=stride, padding=padding, use_bias=bias)(x)

    if arch == "small-cnn":
        inp = keras.Input((28, 28, 1))
        x = L.ReLU()(conv(inp, 16, 3))
        x = L.AveragePooling2D(2)(x)
        x = L.ReLU()(conv(x, 32, 3))
        x = L.AveragePooling2D(2)(x)
        x = L.Flatten()(x)
        x = L.ReLU()(L.Dense(128)(x))
        out = L.Dense(10)(x)
    elif arch == "minionn":
        inp = keras.Input((32, 32, 3))
        x = L.ReLU()(conv(inp, 64, 3))
        x = L.ReLU()(conv(x, 64, 3))
        x = L.AveragePooling2D(2)(x)
        x = L.ReLU()(conv(x, 64, 3))
        x = L.ReLU()(conv(x, 64, 3))
        x = L.AveragePooling2D(2)(x)
        x = L.ReLU()(conv(x, 64, 3))
        x = L.ReLU()(conv(x, 64, 1))
        x = L.ReLU()(conv(x, 16, 1))
        x = L.Flatten()(x)
        out = L.Dense(10)(x)
    elif arch == "resnet32":
        inp = keras.Input((32, 32, 3))
        x = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(conv(inp, 16, 3, bias=False)))
        in_c = 16
        for stage, c in enumerate([16, 32, 64]):
            for block in range(5):
                stride = 2 if stage > 0 and block == 0 else 1
                y = conv(x, c, 3, stride, bias=False)
                y = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(y))
                y = L.BatchNormalization(epsilon=1e-5)(conv(y, c, 3, bias=False))
                if stride != 1 or in_c != c:
                    s = conv(x, c, 1, stride, bias=False, padding="valid")
                    s = L.BatchNormalization(epsilon=1e-5)(s)
                else:
                    s = x
                x = L.ReLU()(L.Add()([s, y]))
                in_c = c
        x = L.GlobalAveragePooling2D()(x)
        out = L.Dense(10)(x)
    else:
        raise SystemExit(f"unknown architecture {arch}")
    return keras.Model(inp, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="small-cnn,minionn,resnet32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-images", type=int, default=6400)
    ap.add_argument("--data-dir", default=os.environ.get("DELPHI_DATA", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--rounds", type=int, default=1, help="timed passes; the best is kept")
    ap.add_argument("--out", default="results/bench/train-keras.json")
    a = ap.parse_args()

    import tensorflow as tf
    from tensorflow import keras

    tf.keras.utils.set_random_seed(1)
    rows = []
    for arch in a.archs.split(","):
        n = a.train_images
        data = fashion(n, a.data_dir) if arch == "small-cnn" else None
        source = "fashion-mnist" if data is not None else "random"
        if data is None:
            shape = (28, 28, 1) if arch == "small-cnn" else (32, 32, 3)
            rng = np.random.default_rng(1)
            data = (rng.standard_normal((n,) + shape, dtype=np.float32), rng.integers(0, 10, n))
        x, y = data
        model = build(arch, keras)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, weight_decay=5e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x, y, batch_size=a.batch_size, epochs=1, shuffle=True, verbose=0)
        model.predict(x, batch_size=a.batch_size, verbose=0)
        train_s = infer_s = float("inf")
        for _ in range(max(1, a.rounds)):
            t = time.perf_counter()
            model.fit(x, y, batch_size=a.batch_size, epochs=1, shuffle=True, verbose=0)
            train_s = min(train_s, time.perf_counter() - t)
            t = time.perf_counter()
            model.predict(x, batch_size=a.batch_size, verbose=0)
            infer_s = min(infer_s, time.perf_counter() - t)
        row = {
            "arch": arch,
            "data": source,
            "train_images_per_s": n / train_s,
            "infer_images_per_s": n / infer_s,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "framework": f"keras {keras.__version__} / tensorflow {tf.__version__} (CPU)",
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "batch_size": a.batch_size,
        "train_images": a.train_images,
        "rounds": a.rounds,
        "archs": rows,
        "rerun": "python3 train/scripts/keras_bench.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "data_dir"
        ),
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
