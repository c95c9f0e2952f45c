#!/usr/bin/env python3
"""SpikingJelly's BPTT step on fmnist_csnn, for side-by-side timings with
`snnc bench` (issue: CPU training at the machine's limit).

The network is examples/models/fmnist_csnn.snn written in SpikingJelly's
multi-step layers: conv 1→32 (3×3, padding 1, no bias), batch norm over
T·B, LIF, 2×2 average pooling, conv 32→64, batch norm, LIF, pooling,
flatten, linear 3136→256 (no bias), LIF, linear 256→10; the image repeated
over T steps (direct encoding); loss: cross-entropy of the time-averaged
output. LIF as snnc's defaults: u ← λ·u + x with λ = 0.2 (SpikingJelly's
tau = 1/(1−λ) = 1.25, decay_input=False), threshold 1, soft reset,
detached reset, sigmoid surrogate with α = 4.

A step is forward + backward (no optimiser update), as `snnc bench`
times it. Prints, per T, the median of --repeats steps after two warm-up
steps, one JSON line each.

usage: spikingjelly-bench.py [-T 1,4,8] [--batch 128] [--repeats 5]
(needs torch and spikingjelly: pip install torch spikingjelly)
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron, surrogate


def lif():
    return neuron.LIFNode(
        tau=1.25,
        decay_input=False,
        v_threshold=1.0,
        v_reset=None,
        detach_reset=True,
        surrogate_function=surrogate.Sigmoid(alpha=4.0),
        step_mode="m",
    )


def net():
    n = nn.Sequential(
        layer.Conv2d(1, 32, 3, padding=1, bias=False),
        layer.BatchNorm2d(32),
        lif(),
        layer.AvgPool2d(2),
        layer.Conv2d(32, 64, 3, padding=1, bias=False),
        layer.BatchNorm2d(64),
        lif(),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(64 * 7 * 7, 256, bias=False),
        lif(),
        layer.Linear(256, 10, bias=False),
    )
    functional.set_step_mode(n, "m")
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-T", default="1,4,8")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = net()
    x = torch.rand(a.batch, 1, 28, 28)
    y = torch.randint(0, 10, (a.batch,))
    for t in [int(s) for s in a.T.split(",")]:
        xs = x.unsqueeze(0).repeat(t, 1, 1, 1, 1)
        times = []
        for i in range(a.repeats + 2):
            start = time.perf_counter()
            out = model(xs).mean(0)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            functional.reset_net(model)
            model.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - start)
        print(
            json.dumps(
                {
                    "framework": f"spikingjelly (torch {torch.__version__}, {torch.get_num_threads()} threads)",
                    "T": t,
                    "batch": a.batch,
                    "median_step_seconds": statistics.median(times),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
