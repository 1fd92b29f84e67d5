"""Fused attention for the onnxruntime targets: each attention block of an exported graph (two MatMuls around a
Softmax, with the head split and merge around them) becomes one ``com.microsoft`` ``MultiHeadAttention`` node.

torch.onnx writes diffusers' scaled-dot-product attention as elementary ops::

    q -> Reshape [B, -1, H, d] -> Transpose (0,2,1,3) -> Mul f --\
    k -> Reshape [B, -1, H, d] -> Transpose (0,2,3,1) -> Mul f ---> MatMul -> Softmax -> MatMul -> Transpose (0,2,1,3)
    v -> Reshape [B, -1, H, d] -> Transpose (0,2,1,3) ----------------------------------/        -> Reshape [B, -1, H*d]

which materialises every head's full score matrix: at SD-1.5 size and 64x64 latents that is 2 x 8 x 4096 x 4096
floats (1 GiB) per self-attention call, written and read twice around the Softmax. onnxruntime's
MultiHeadAttention kernel (CPU and onnxruntime-web's wasm build) computes the same function without keeping
the scores (measured in benchmarks/results/realsize_speed.md). The factor ``f`` is either a constant (then the
scale is ``f * f``) or the chain torch writes for the default scale, ``sqrt(1 / sqrt(d))`` computed from the
query's shape (then the node takes its own default, ``1 / sqrt(d)``); anything else is left as it is.

onnxruntime's transformers optimizer has an attention fusion for UNets, but it matches the graphs of older
exporters (it fused none of edgekit's, measured): this pass matches the pattern edgekit's exporter writes and
nothing else. Attention blocks with a mask (the text encoder's causal one) do not match and stay as they are.
The rewrite reads no weights: graphs with external data keep their data files untouched.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

DOMAIN = "com.microsoft"
OP = "MultiHeadAttention"


class _Graph:
    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {t.name: t for t in graph.initializer}
        self._array = numpy_helper.to_array
        self.outputs = {o.name for o in graph.output}

    def op(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None

    def constant(self, name: str):
        """The value of a Constant node's output or an initializer; None when computed at run time."""
        from onnx import helper

        if name in self.constants:
            return self._array(self.constants[name])
        node = self.op(name, "Constant")
        if node is None:
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return self._array(attr.t)
            if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                return np.asarray(helper.get_attribute_value(attr))
        return None


def _perm(node) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def _heads(g: _Graph, reshape) -> int | None:
    """H of a Reshape to [B, -1, H, d]: a constant shape, or a Concat whose third part is a constant."""
    shape = g.constant(reshape.input[1])
    if shape is not None:
        return int(shape.reshape(-1)[2]) if shape.size == 4 else None
    concat = g.op(reshape.input[1], "Concat")
    if concat is None or len(concat.input) != 4:
        return None
    part = g.constant(concat.input[2])
    return int(part.reshape(-1)[0]) if part is not None and part.size == 1 else None


def _split(g: _Graph, name: str, perm: list[int]):
    """(source tensor, heads) when ``name`` is ``source -> Reshape [B,-1,H,d] -> Transpose perm``."""
    transpose = g.op(name, "Transpose")
    if transpose is None or _perm(transpose) != perm:
        return None
    reshape = g.op(transpose.input[0], "Reshape")
    if reshape is None:
        return None
    heads = _heads(g, reshape)
    return (reshape.input[0], heads, transpose.output[0]) if heads else None


def _default_scale_chain(g: _Graph, factor: str, query_heads: str) -> bool:
    """``factor`` = sqrt(1 / sqrt(last dim of query_heads)), as torch.onnx writes SDPA's default scale."""
    def skip_cast(name):
        cast = g.op(name, "Cast")
        return cast.input[0] if cast is not None else name

    outer = g.op(factor, "Sqrt")
    div = outer and g.op(skip_cast(outer.input[0]), "Div")
    one = div is not None and g.constant(div.input[0])
    if div is None or one is None or one.size != 1 or float(one.reshape(-1)[0]) != 1.0:
        return False
    inner = g.op(div.input[1], "Sqrt")
    dim = inner and (g.op(skip_cast(inner.input[0]), "Slice") or g.op(skip_cast(inner.input[0]), "Gather"))
    shape = dim and g.op(dim.input[0], "Shape")
    return shape is not None and shape.input[0] == query_heads


def _scaled(g: _Graph, name: str):
    """(tensor before the Mul, factor) for ``name`` = Mul(tensor, factor); (name, None) without a Mul."""
    mul = g.op(name, "Mul")
    return (mul.input[0], mul.input[1]) if mul is not None else (name, None)


def _match(g: _Graph, softmax):
    """The MultiHeadAttention node replacing the block around ``softmax``, or None when it does not match."""
    from onnx import helper

    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    scores = g.op(softmax.input[0], "MatMul")
    mixed = g.only_consumer(softmax.output[0], "MatMul")
    if scores is None or mixed is None or mixed.input[0] != softmax.output[0]:
        return None
    q_heads, q_factor = _scaled(g, scores.input[0])
    k_heads, k_factor = _scaled(g, scores.input[1])
    q = _split(g, q_heads, [0, 2, 1, 3])
    k = _split(g, k_heads, [0, 2, 3, 1])
    v = _split(g, mixed.input[1], [0, 2, 1, 3])
    if not (q and k and v) or not q[1] == k[1] == v[1]:
        return None
    merge = g.only_consumer(mixed.output[0], "Transpose")
    out = merge is not None and _perm(merge) == [0, 2, 1, 3] and g.only_consumer(merge.output[0], "Reshape")
    if not out:
        return None
    shape = g.constant(out.input[1])
    if shape is not None and shape.size != 3:
        return None
    attrs = {"num_heads": q[1]}
    if q_factor is None and k_factor is None:
        attrs["scale"] = 1.0  # no scaling at all in the graph
    elif q_factor is not None and k_factor is not None:
        fq, fk = g.constant(q_factor), g.constant(k_factor)
        if fq is not None and fk is not None and fq.size == 1 and fk.size == 1:
            attrs["scale"] = float(fq.reshape(-1)[0]) * float(fk.reshape(-1)[0])
        elif not all(_default_scale_chain(g, f, q[2]) for f in (q_factor, k_factor)):
            return None
    else:
        return None
    return helper.make_node(OP, [q[0], k[0], v[0]], [out.output[0]], name=f"{softmax.name or out.name}/mha",
                            domain=DOMAIN, **attrs)


def _drop_dead(graph) -> None:
    """Remove nodes none of whose outputs is used (repeatedly, so whole chains go), then the initializers
    no node reads any more (the split's shape constants)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [i for i, node in enumerate(graph.node) if not any(o in used for o in node.output if o)]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    unused = [i for i, t in enumerate(graph.initializer) if t.name not in used]
    for i in reversed(unused):
        del graph.initializer[i]


def fuse_attention(model) -> int:
    """Rewrite ``model`` (an onnx ModelProto) in place; returns how many attention blocks became one node."""
    from onnx import helper

    g = _Graph(model.graph)
    fused = []
    for node in list(model.graph.node):
        if node.op_type == "Softmax":
            mha = _match(g, node)
            if mha is not None:
                fused.append(mha)
    if not fused:
        return 0
    replaced = {n.output[0] for n in fused}
    # the MultiHeadAttention node takes the place of the Reshape that wrote its output (topological order holds:
    # every input of the new node is produced before the query/key/value splits)
    nodes = []
    for node in model.graph.node:
        if node.output and node.output[0] in replaced:
            nodes.append(next(n for n in fused if n.output[0] == node.output[0]))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_dead(model.graph)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return len(fused)


def fuse_attention_file(path: Path) -> int:
    """Fuse the graph at ``path`` in place (weights in external files stay where they are); returns the count."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    count = fuse_attention(model)
    if count:
        tmp = path.with_name(path.name + ".fusing")
        onnx.save_model(model, str(tmp))
        tmp.replace(path)
    return count
