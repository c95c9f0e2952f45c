"""Cross-checks snnc's NIR files against the reference `nir` package.

Run by tests/nir_interop.rs (with the Python that build.rs probed):

  nir_check.py export CASE_DIR [SNNC_BIN]
      CASE_DIR/model.nir (written by `snnc export`) is read with `nir.read`;
      its node types, shapes and parameters are checked against what snnc's
      model and parameters (CASE_DIR/expect.h5, written by the test) say they
      must be -- batch norm folded here in NumPy, independently of snnc, and
      the LIF/IF mapping recomputed from lambda and theta; then the graph is
      simulated in NumPy (`Sim` below) on the test's input and the spike
      counts of every neuron node and the readout are compared with snnc's
      inference. With SNNC_BIN, `snnc run --params --input --f64 --json` is
      run on the same input and its readout compared too.

  nir_check.py build OUT_DIR
      Builds NIR graphs with the `nir` package (an Affine+LIF MLP, a
      Conv2d+IF+SumPool2d net with Flatten/Scale/Linear/Threshold, a
      residual sum, a nested graph with AvgPool2d), writes them with
      `nir.write`, simulates them in NumPy and writes the input and expected
      outputs; also graphs with one primitive snnc cannot express each.

Semantics simulated (NIR 1.0 as the `nir` package documents it in
nir/ir/neuron.py, discretised with forward Euler at the step dt):
  LIF  v += dt/tau * (v_leak - v + r*I);  z = v > v_threshold;  reset
  IF   v += dt * r * I;                   z = v > v_threshold;  reset
  reset: v = v_reset where z (NIR), or v -= v_threshold where z when the
         node's metadata says snnc_reset = subtract (snnc's soft reset)
  Threshold z = x > threshold; Affine Wx + b; Linear Wx; Scale x*s;
  Conv2d, SumPool2d, AvgPool2d, Flatten as in PyTorch.
Edges are identity maps ("a graph of computational nodes and identity
edges", nir/ir/graph.py); a node with several incoming edges receives their
sum; values pass along every edge within the same step. The readout is the
mean over the T steps of the Output node.
"""

import json
import os
import struct
import subprocess
import sys

import h5py
import nir
import numpy as np


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


# ---------------------------------------------------------------- simulator


def conv2d(x, w, b, stride, padding, dilation, groups):
    if isinstance(padding, str):
        padding = padding.decode() if isinstance(padding, bytes) else padding
        k = w.shape[2]
        padding = (k // 2, k // 2) if padding == "same" else (0, 0)
    stride, padding, dilation = [np.broadcast_to(np.asarray(v), (2,)) for v in (stride, padding, dilation)]
    assert tuple(dilation) == (1, 1) and int(groups) == 1, "simulator: dilation 1, groups 1"
    ph, pw = int(padding[0]), int(padding[1])
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    co, ci, kh, kw = w.shape
    sh, sw = int(stride[0]), int(stride[1])
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    # win: B, C, Ho, Wo, kh, kw
    y = np.einsum("bchwij,ocij->bohw", win, w, optimize=True)
    return y + np.asarray(b).reshape(1, -1, 1, 1)


def pool(x, k, s, p, avg):
    k, s, p = [np.broadcast_to(np.asarray(v), (2,)) for v in (k, s, p)]
    assert tuple(p) == (0, 0), "simulator: pooling without padding"
    win = np.lib.stride_tricks.sliding_window_view(x, (int(k[0]), int(k[1])), axis=(2, 3))
    win = win[:, :, :: int(s[0]), :: int(s[1])]
    y = win.sum(axis=(4, 5))
    return y / (k[0] * k[1]) if avg else y


def topo(g):
    preds = {n: [] for n in g.nodes}
    for a, b in g.edges:
        preds[b].append(a)
    order, seen = [], set()

    def visit(n):
        if n in seen:
            return
        seen.add(n)
        for p in preds[n]:
            visit(p)
        order.append(n)

    for n in sorted(g.nodes):
        visit(n)
    return order, preds


class Sim:
    """One NIR graph with its state, stepped in time."""

    def __init__(self, g, dt, prefix=""):
        self.g, self.dt, self.prefix = g, dt, prefix
        self.order, self.preds = topo(g)
        self.state = {}
        self.subs = {n: Sim(v, dt, prefix + n + ".") for n, v in g.nodes.items() if isinstance(v, nir.NIRGraph)}
        self.spikes = {}
        # The smallest |v - threshold| / (1 + |threshold|) seen: how close a
        # spike came to being decided by rounding.
        self.margin = np.inf

    def fire(self, name, node, v, vth):
        z = (v > vth).astype(np.float64)
        self.margin = min(self.margin, float(np.min(np.abs(v - vth) / (1 + np.abs(vth)))))
        key = self.prefix + name
        self.spikes[key] = self.spikes.get(key, 0) + z
        return z

    def step(self, x):
        val = {}
        out = None
        for n in self.order:
            node = self.g.nodes[n]
            if isinstance(node, nir.Input):
                v = x
            else:
                ins = [val[p] for p in self.preds[n]]
                assert ins, f"node {n} has no input"
                v = ins[0]
                for other in ins[1:]:
                    v = v + other
            md = getattr(node, "metadata", {}) or {}
            dt = float(md.get("snnc_dt", self.dt))
            if isinstance(node, (nir.Input,)):
                y = v
            elif isinstance(node, nir.Output):
                y = v
                out = v
            elif isinstance(node, nir.NIRGraph):
                y = self.subs[n].step(v)
            elif isinstance(node, nir.Affine):
                y = v @ node.weight.T + node.bias
            elif isinstance(node, nir.Linear):
                y = v @ node.weight.T
            elif isinstance(node, nir.Scale):
                y = v * node.scale
            elif isinstance(node, nir.Conv2d):
                y = conv2d(v, node.weight, node.bias, node.stride, node.padding, node.dilation, node.groups)
            elif isinstance(node, nir.SumPool2d):
                y = pool(v, node.kernel_size, node.stride, node.padding, False)
            elif isinstance(node, nir.AvgPool2d):
                y = pool(v, node.kernel_size, node.stride, node.padding, True)
            elif isinstance(node, nir.Flatten):
                s = int(node.start_dim)
                assert s == 0 and int(node.end_dim) == -1, "simulator: Flatten over every non-batch axis"
                y = v.reshape(v.shape[0], -1)
            elif isinstance(node, nir.Threshold):
                y = self.fire(n, node, v, node.threshold)
            elif isinstance(node, (nir.LIF, nir.IF)):
                s = self.state.get(n, np.zeros_like(v))
                if isinstance(node, nir.LIF):
                    s = s + dt / node.tau * (node.v_leak - s + node.r * v)
                else:
                    s = s + dt * node.r * v
                y = self.fire(n, node, s, node.v_threshold)
                if md.get("snnc_reset") == "subtract":
                    s = s - y * node.v_threshold
                else:
                    s = np.where(y > 0, node.v_reset, s)
                self.state[n] = s
            else:
                raise ValueError(f"simulator: no semantics for {type(node).__name__} (node {n})")
            val[n] = y
        return out

    def margins(self):
        return min([self.margin] + [s.margins() for s in self.subs.values()])

    def all_spikes(self):
        d = dict(self.spikes)
        for s in self.subs.values():
            d.update(s.all_spikes())
        return d


def simulate(g, x, T, dt, events=False):
    sim = Sim(g, dt)
    outs = [sim.step(x[:, t] if events else x) for t in range(T)]
    return np.mean(outs, axis=0), sim.all_spikes(), sim.margins()


def agree(got, want, rel, floor):
    """|got - want| <= rel * max(|want|, floor * max|want|) per element (snnc::compare)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return False, f"shapes {got.shape} vs {want.shape}"
    scale = np.max(np.abs(want)) if want.size else 0.0
    allowed = rel * np.maximum(np.abs(want), floor * scale)
    err = np.abs(got - want)
    bad = err > allowed
    worst = float(np.max(err / np.where(allowed > 0, allowed, 1e-300))) if want.size else 0.0
    if bad.any():
        i = int(np.argmax(bad))
        return False, f"{int(bad.sum())} element(s) differ, first at {i}: got {got.flat[i]} want {want.flat[i]}; worst {worst:.2f}x the tolerance"
    return True, f"worst {worst:.3g}x the tolerance"


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for k, v in tensors.items():
        b = np.ascontiguousarray(v, dtype="<f8").tobytes()
        header[k] = {"dtype": "F64", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ------------------------------------------------------- check an export


def check_export(case, snnc_bin=None):
    g = nir.read(os.path.join(case, "model.nir"))
    e = h5py.File(os.path.join(case, "expect.h5"), "r")
    layers = json.loads(e["layers"][()].decode() if isinstance(e["layers"][()], bytes) else e["layers"][()])
    params = {k: e["params"][k][()] for k in e["params"]}
    T = int(e["T"][()][0])
    rel, floor = float(e["rel"][()][0]), float(e["floor"][()][0])
    wrel = float(e["weight_rel"][()][0])
    events = bool(int(e["events"][()][0]))
    dt = float(g.metadata.get("snnc_dt", 1e-4)) if isinstance(g.metadata, dict) else 1e-4
    x = e["x"][()]
    checked = 0

    def node(name, typ):
        if name not in g.nodes:
            fail(f"node {name} ({typ}) missing; nodes: {sorted(g.nodes)}")
        n = g.nodes[name]
        if type(n).__name__ != typ:
            fail(f"node {name} is a {type(n).__name__}, expected {typ}")
        return n

    def same(what, got, want, r=None):
        ok, msg = agree(got, want, r if r is not None else wrel, 1e-6)
        if not ok:
            fail(f"{what}: {msg}")

    for l in layers:
        p, kw = l["path"], l["keyword"]
        name = kw + "_" + p.replace(".", "_")
        if kw in ("batchnorm", "dropout", "residual"):
            if name in g.nodes:
                fail(f"{kw} {p} should not be a node (folded or left out), found {name}")
            continue
        if kw in ("conv2d", "linear"):
            w = params[p + ".weight"].astype(np.float64)
            b = params[p + ".bias"].astype(np.float64) if (p + ".bias") in params else np.zeros(w.shape[0])
            bn = l.get("bn_after")
            if bn:
                q = bn["path"]
                s = params[q + ".gamma"] / np.sqrt(params[q + ".running_var"] + bn["eps"])
                w = w * s.reshape(-1, *([1] * (w.ndim - 1)))
                b = (b - params[q + ".running_mean"]) * s + params[q + ".beta"]
            if kw == "conv2d":
                n = node(name, "Conv2d")
                same(f"{name} weight", n.weight, w)
                same(f"{name} bias", n.bias, b)
                if tuple(np.broadcast_to(n.stride, (2,))) != (l["stride"],) * 2:
                    fail(f"{name} stride {n.stride}, expected {l['stride']}")
                if tuple(np.broadcast_to(n.padding, (2,))) != (l["padding"],) * 2:
                    fail(f"{name} padding {n.padding}, expected {l['padding']}")
            else:
                typ = "Affine" if (l["bias"] or bn) else "Linear"
                n = node(name, typ)
                same(f"{name} weight", n.weight, w)
                if typ == "Affine":
                    same(f"{name} bias", n.bias, b)
        elif kw in ("lif", "if"):
            nr = l["neuron"]
            lam, th = nr["lambda"], nr["theta"]
            vr = nr["v_reset"] if nr["reset"] == "hard" else 0.0
            if lam == 1.0:
                n = node(name, "IF")
                same(f"{name} r", n.r, np.full(n.r.shape, 1.0 / dt), 1e-12)
            else:
                n = node(name, "LIF")
                tau = dt / (1.0 - lam)
                same(f"{name} tau", n.tau, np.full(n.tau.shape, tau), 1e-12)
                same(f"{name} r", n.r, np.full(n.r.shape, tau / dt), 1e-12)
                same(f"{name} v_leak", n.v_leak, np.zeros(n.v_leak.shape), 1e-12)
            same(f"{name} v_threshold", n.v_threshold, np.full(n.v_threshold.shape, th), 1e-12)
            same(f"{name} v_reset", n.v_reset, np.full(n.v_reset.shape, vr), 1e-12)
            want_reset = "subtract" if nr["reset"] == "soft" else "to_v_reset"
            if n.metadata.get("snnc_reset") != want_reset:
                fail(f"{name} metadata snnc_reset {n.metadata.get('snnc_reset')}, expected {want_reset}")
        elif kw == "avgpool":
            n = node(name, "AvgPool2d")
            if tuple(np.broadcast_to(n.kernel_size, (2,))) != (l["kernel"],) * 2:
                fail(f"{name} kernel {n.kernel_size}")
        elif kw == "flatten":
            node(name, "Flatten")
        else:
            fail(f"layer {p} {kw}: no expectation")
        if kw in ("conv2d", "linear", "lif", "if"):
            got = list(np.asarray(n.output_type["output"]).astype(int))
            if got != l["output"]:
                fail(f"{name}: nir infers output type {got}, snnc's layer gives {l['output']}")
        checked += 1
    # Simulate and compare with snnc's inference.
    readout, spikes, margin = simulate(g, x, T, dt, events)
    ok, msg = agree(readout, e["logits"][()], rel, floor)
    if not ok:
        fail(f"readout vs snnc: {msg}")
    readout_msg = msg
    for k in e["spikes"]:
        want = e["spikes"][k][()]
        got = spikes.get(k)
        if got is None:
            fail(f"snnc layer {k} has spikes but the NIR simulation has no node {k}")
        if not np.array_equal(got, want):
            fail(f"spike counts of {k} differ in {int(np.sum(got != want))} neuron(s) (total {got.sum()} vs {want.sum()})")
    if len(spikes) != len(e["spikes"]):
        fail(f"NIR neuron nodes {sorted(spikes)} vs snnc spiking layers {sorted(e['spikes'])}")
    result = {"nodes": len(g.nodes), "layers_checked": checked, "readout": readout_msg,
              "spiking_layers": len(spikes), "spikes": int(sum(v.sum() for v in spikes.values())),
              "margin": margin}
    if snnc_bin:
        inp = os.path.join(case, "x.safetensors")
        write_safetensors(inp, {"x": x})
        out = subprocess.run(
            [snnc_bin, "run", os.path.join(case, "model.snn"), "--params", os.path.join(case, "params.safetensors"),
             "--input", inp, "-T", str(T), "--f64", "--json"],
            capture_output=True, text=True)
        if out.returncode != 0:
            fail("snnc run: " + out.stderr)
        r = json.loads(out.stdout)
        ok, msg = agree(np.array(r["logits"]), readout, rel, floor)
        if not ok:
            fail(f"`snnc run` readout vs the NumPy simulation of the NIR file: {msg}")
        result["snnc_run"] = msg
    print(json.dumps(result))


# ------------------------------------------------------------- build graphs


def lif(shape, tau, r, vth, vreset=0.0):
    f = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731
    return nir.LIF(tau=f(tau), r=f(r), v_leak=f(0.0), v_threshold=f(vth), v_reset=f(vreset))


def if_(shape, r, vth, vreset=0.0):
    f = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731
    return nir.IF(r=f(r), v_threshold=f(vth), v_reset=f(vreset))


def build(out):
    rng = np.random.default_rng(7)
    dt = 1e-3
    W = lambda *s: (rng.standard_normal(s) * (1.5 / np.sqrt(np.prod(s[1:])))).astype(np.float32)  # noqa: E731
    cases = {}
    # 1. Affine + LIF MLP: lambda = 1 - dt/tau = 0.8, input gain dt*r/tau = 0.4,
    #    hard reset to -0.1.
    cases["mlp"] = (nir.NIRGraph(nodes={
        "input": nir.Input(input_type=np.array([8])),
        "fc1": nir.Affine(weight=W(16, 8), bias=W(16, 1)[:, 0]),
        "lif1": lif([16], 5e-3, 2.0, 0.5, -0.1),
        "fc2": nir.Affine(weight=W(4, 16), bias=W(4, 1)[:, 0]),
        "output": nir.Output(output_type=np.array([4])),
    }, edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "output")]), [8], 6)
    # 2. Conv2d + IF + SumPool2d, then Flatten, Scale, Linear, Threshold, Affine.
    cases["conv"] = (nir.NIRGraph(nodes={
        "input": nir.Input(input_type=np.array([2, 8, 8])),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=W(4, 2, 3, 3), stride=1, padding=1, dilation=1, groups=1,
                           bias=W(4, 1)[:, 0]),
        "if1": if_([4, 8, 8], 500.0, 1.0),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0, end_dim=-1),
        "scale": nir.Scale(scale=np.full(64, 0.5)),
        "lin": nir.Linear(weight=W(6, 64)),
        "thr": nir.Threshold(threshold=np.full(6, 0.3)),
        "fc": nir.Affine(weight=W(3, 6), bias=W(3, 1)[:, 0]),
        "output": nir.Output(output_type=np.array([3])),
    }, edges=[("input", "conv"), ("conv", "if1"), ("if1", "pool"), ("pool", "flat"), ("flat", "scale"),
              ("scale", "lin"), ("lin", "thr"), ("thr", "fc"), ("fc", "output")]), [2, 8, 8], 5)
    # 3. A residual sum: lif_a feeds a branch and, directly, the join lif_c.
    cases["residual"] = (nir.NIRGraph(nodes={
        "input": nir.Input(input_type=np.array([6])),
        "fc0": nir.Affine(weight=W(10, 6), bias=W(10, 1)[:, 0]),
        "lif_a": lif([10], 5e-3, 5.0, 1.0),
        "fc1": nir.Affine(weight=W(10, 10), bias=W(10, 1)[:, 0]),
        "lif_b": lif([10], 4e-3, 4.0, 1.0),
        "fc2": nir.Linear(weight=W(10, 10)),
        "lif_c": lif([10], 2e-3, 2.0, 1.0),
        "fc3": nir.Affine(weight=W(3, 10), bias=W(3, 1)[:, 0]),
        "output": nir.Output(output_type=np.array([3])),
    }, edges=[("input", "fc0"), ("fc0", "lif_a"), ("lif_a", "fc1"), ("fc1", "lif_b"), ("lif_b", "fc2"),
              ("fc2", "lif_c"), ("lif_a", "lif_c"), ("lif_c", "fc3"), ("fc3", "output")]), [6], 6)
    # 4. A nested graph (Affine + LIF inside), after AvgPool2d and Flatten.
    sub = nir.NIRGraph(nodes={
        "input": nir.Input(input_type=np.array([9])),
        "fc": nir.Affine(weight=W(5, 9), bias=W(5, 1)[:, 0]),
        "lif": lif([5], 10e-3, 10.0, 0.8),
        "output": nir.Output(output_type=np.array([5])),
    }, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    cases["nested"] = (nir.NIRGraph(nodes={
        "input": nir.Input(input_type=np.array([1, 6, 6])),
        "pool": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([1, 3, 3])}, start_dim=0, end_dim=-1),
        "sub": sub,
        "lin": nir.Linear(weight=W(3, 5)),
        "output": nir.Output(output_type=np.array([3])),
    }, edges=[("input", "pool"), ("pool", "flat"), ("flat", "sub"), ("sub", "lin"), ("lin", "output")]),
        [1, 6, 6], 5)
    made = []
    for name, (g, shape, T) in cases.items():
        nir.write(os.path.join(out, name + ".nir"), g)
        g2 = nir.read(os.path.join(out, name + ".nir"))
        for attempt in range(20):
            x = rng.uniform(0, 1.5, size=[4] + shape)
            readout, spikes, margin = simulate(g2, x, T, dt)
            if margin > 1e-9:
                break
        else:
            fail(f"{name}: every input drawn came within 1e-9 of a threshold")
        with h5py.File(os.path.join(out, name + ".expect.h5"), "w") as f:
            f["x"], f["T"], f["dt"], f["logits"] = x, np.array([T]), np.array([dt]), readout
            for k, v in spikes.items():
                f["spikes/" + k] = v
        made.append({"name": name, "T": T, "dt": dt, "spikes": int(sum(v.sum() for v in spikes.values())),
                     "margin": margin})
    # Graphs with one primitive snnc cannot express, at node `x_node`.
    f = lambda v: np.full([4], v)  # noqa: E731
    bad = {
        "CubaLIF": nir.CubaLIF(tau_syn=f(1e-3), tau_mem=f(1e-3), r=f(1.0), v_leak=f(0.0), v_threshold=f(1.0)),
        "CubaLI": nir.CubaLI(tau_syn=f(1e-3), tau_mem=f(1e-3), r=f(1.0), v_leak=f(0.0)),
        "LI": nir.LI(tau=f(1e-3), r=f(1.0), v_leak=f(0.0)),
        "I": nir.I(r=f(1.0)),
        "Delay": nir.Delay(delay=f(1.0)),
    }
    for typ, node in bad.items():
        g = nir.NIRGraph(nodes={
            "input": nir.Input(input_type=np.array([4])),
            "fc": nir.Affine(weight=W(4, 4), bias=np.zeros(4, np.float32)),
            "x_node": node,
            "fc2": nir.Affine(weight=W(2, 4), bias=np.zeros(2, np.float32)),
            "output": nir.Output(output_type=np.array([2])),
        }, edges=[("input", "fc"), ("fc", "x_node"), ("x_node", "fc2"), ("fc2", "output")], type_check=False)
        nir.write(os.path.join(out, "bad_" + typ + ".nir"), g)
    print(json.dumps({"cases": made, "unsupported": sorted(bad)}))


if __name__ == "__main__":
    if sys.argv[1] == "export":
        check_export(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "build":
        build(sys.argv[2])
    else:
        fail("usage: nir_check.py export CASE_DIR [SNNC_BIN] | build OUT_DIR")
