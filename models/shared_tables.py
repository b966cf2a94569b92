"""Tied embedding tables held once in memory: rewrites `fleetgen model import` applies to
onnxruntime-genai builder graphs (ADR 0103).

A checkpoint with tied word embeddings has one matrix that is both the token embedding (a
Gather by token id) and the LM head (a MatMul every step). The builder keeps it once in the
file, but ONNX Runtime holds it twice in memory:

- fp32: the LM head MatMul prepacks its constant weight into a private copy, and the
  embedding's Transpose of the same weight is constant-folded into a second one (two x
  113 MB on a SmolLM-135M). `map_tied_table` makes the weight a graph input that the agent
  maps read-only from the data file (`fleetgen.mapped_input.*` metadata, agent.runtime.mapped):
  the MatMul reads it in place (ORT's M = 1 kernel reads B directly, so decode loses nothing),
  and the embedding gathers its columns with Gather(axis=1) + Transpose from the same pages.
  One copy, in the page cache, as llama.cpp holds its mmapped file.
- int8: the builder cannot share int8 tables, so it writes a separate float32 embedding (113 MB
  in the file, faulted in page by page as tokens are gathered). `share_int8_embedding` checks
  that the table is the LM head's weight (every value within one quantization step of the
  dequantized int8 block) and replaces its Gather with GatherBlockQuantized over the int8 LM
  head, as the builder itself does at int4.

Both leave the graph's inputs and outputs for the decoders as they were and change no logit of
the fp32 graph (the int8 embedding becomes its own dequantized weights, as llama.cpp's q8_0).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime.mapped import METADATA_PREFIX, MappedInput

log = logging.getLogger(__name__)

_FLOAT = 1  # onnx.TensorProto.FLOAT
_UINT8 = 2


@dataclass(frozen=True)
class TableRewrite:
    """What a rewrite did; `detail` is the words for the manifest (`graph.tables`) and the import summary."""

    kind: str  # "mapped-lm-head" | "int8-shared-embedding"
    detail: str
    rows_of: str = ""  # int8: the initializer whose bytes the mapped input `mapped` reads
    mapped: str = ""


def _ext(tensor: Any) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def map_tied_table(model: Any, folder: Path) -> TableRewrite | None:
    """fp32: the tied LM head weight becomes an input mapped from its external data (in place).

    Pattern (the builder's fp32 graph with `shared_embeddings`): W [hidden, vocab] an external
    float initializer, consumed by exactly Transpose(perm 1,0) -> Gather(indices input_ids) and
    MatMul(x, W) -> logits. Anything else is left alone (returns None).
    """
    import onnx
    from onnx import helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = _consumers(graph)
    for name, w in inits.items():
        users = uses.get(name, [])
        if (len(w.dims) != 2 or w.data_type != _FLOAT or w.data_location != onnx.TensorProto.EXTERNAL
                or len(users) != 2):
            continue
        transpose = next((n for n in users if n.op_type == "Transpose" and list(_attrs(n).get("perm", [])) == [1, 0]),
                         None)
        matmul = next((n for n in users if n.op_type == "MatMul" and n.input[1] == name), None)
        if transpose is None or matmul is None or "logits" not in matmul.output:
            continue
        gathers = uses.get(transpose.output[0], [])
        if len(gathers) != 1 or gathers[0].op_type != "Gather" or gathers[0].input[0] != transpose.output[0]:
            continue
        gather = gathers[0]
        if int(_attrs(gather).get("axis", 0)) != 0:
            continue
        info = _ext(w)
        location = info.get("location", "")
        if "/" in location or location.startswith(".") or not (folder / location).is_file():
            continue
        hidden, vocab = (int(d) for d in w.dims)
        mapped = MappedInput(name=name, file=location, offset=int(info.get("offset", "0")), dtype="float32",
                             shape=(hidden, vocab))
        if mapped.offset + mapped.nbytes > (folder / location).stat().st_size:
            continue
        # Gather the token's column of W ([hidden, 1, n]) and put hidden last ([1, n, hidden])
        columns = f"{gather.output[0]}/columns"
        new_gather = helper.make_node("Gather", [name, gather.input[1]], [columns], name=f"{gather.name}/columns",
                                      axis=1)
        put_back = helper.make_node("Transpose", [columns], list(gather.output), name=f"{gather.name}/hidden_last",
                                    perm=[1, 2, 0])
        nodes = list(graph.node)
        at = nodes.index(gather)
        nodes[at:at + 1] = [new_gather, put_back]
        nodes.remove(transpose)
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.remove(w)
        graph.input.append(helper.make_tensor_value_info(name, _FLOAT, [hidden, vocab]))
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + name, mapped.to_json()
        return TableRewrite("mapped-lm-head", detail=f"tied LM head / embedding {name} [{hidden}, {vocab}] "
                                                     f"read in place from {location} (one copy)")
    return None


def share_int8_embedding(model: Any, folder: Path) -> TableRewrite | None:
    """int8: a float embedding table equal to the int8 LM head's weights -> GatherBlockQuantized."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = _consumers(graph)
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and "logits" in n.output), None)
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
                   and n.input[1] == "input_ids" and len(inits[n.input[0]].dims) == 2
                   and inits[n.input[0]].data_type == _FLOAT), None)
    if head is None or gather is None or len(head.input) > 3 or len(uses.get(gather.input[0], [])) != 1:
        return None  # no zero points or bias expected in the builder's symmetric int8 head
    attrs = _attrs(head)
    bits, block, k, n = (int(attrs.get(a, 0)) for a in ("bits", "block_size", "K", "N"))
    table_t, q_t, s_t = inits.get(gather.input[0]), inits.get(head.input[1]), inits.get(head.input[2])
    if bits != 8 or table_t is None or q_t is None or s_t is None or list(table_t.dims) != [n, k]:
        return None
    blocks = -(-k // block)
    if k % block or list(q_t.dims) != [n, blocks, block] or int(np.prod(s_t.dims)) != n * blocks:
        return None
    table = numpy_helper.to_array(table_t, base_dir=str(folder)).astype(np.float32)
    q = numpy_helper.to_array(q_t, base_dir=str(folder)).reshape(n, k)
    scales = numpy_helper.to_array(s_t, base_dir=str(folder)).astype(np.float32).reshape(n, blocks)
    # MatMulNBits without zero points dequantizes uint8 as (q - 128) * scale
    deq = (q.astype(np.float32) - 128.0).reshape(n, blocks, block) * scales[:, :, None]
    # within one step: round-to-nearest is half of one, and the block's extreme may clip at 255
    # (scale = absmax / -128); an untied table is off by up to the whole range, 128 steps
    step = np.abs(scales)[:, :, None] * (1 + 1e-3) + 1e-7
    if not bool(np.all(np.abs(deq - table.reshape(n, blocks, block)) <= step)):
        log.info("%s is not the LM head's weight (untied checkpoint): kept", table_t.name)
        return None
    # GatherBlockQuantized reads the int8 rows in place from a mapped input (the same bytes
    # MatMulNBits prepacks from): a constant would keep a second in-memory copy of them
    rows = f"{q_t.name}/rows"
    scales_name = s_t.name
    nodes = []
    if list(s_t.dims) != [n, blocks]:
        scales_name = f"{s_t.name}/as_rows"
        sshape = f"{scales_name}/shape"
        nodes += [helper.make_node("Constant", [], [sshape], name=f"{scales_name}/shape_const",
                                   value=numpy_helper.from_array(np.array([n, blocks], dtype=np.int64), sshape)),
                  helper.make_node("Reshape", [s_t.name, sshape], [scales_name], name=f"{scales_name}/reshape")]
    nodes.append(helper.make_node("GatherBlockQuantized", [rows, gather.input[1], scales_name], list(gather.output),
                                  name=f"{gather.name}/BlockQuantized", domain="com.microsoft", bits=8,
                                  block_size=block, gather_axis=0, quantize_axis=1))
    graph.input.append(helper.make_tensor_value_info(rows, _UINT8, [n, k]))
    all_nodes = list(graph.node)
    at = all_nodes.index(gather)
    all_nodes[at:at + 1] = nodes
    del graph.node[:]
    graph.node.extend(all_nodes)
    graph.initializer.remove(table_t)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return TableRewrite("int8-shared-embedding", rows_of=q_t.name, mapped=rows, detail=
                        f"embedding gathered from the int8 LM head {q_t.name}, read in place (GatherBlockQuantized, "
                        f"block {block}); float table {table_t.name} [{n}, {k}] dropped")


def rewrite(model_path: Path) -> list[TableRewrite]:
    """Apply whichever rewrite the graph admits, in place (graph and data file). Returns what was done."""
    import onnx

    folder = model_path.parent
    model = onnx.load(str(model_path), load_external_data=False)
    done: list[TableRewrite] = []
    fp32 = map_tied_table(model, folder)
    if fp32 is not None:
        done.append(fp32)
        _save_graph(model, model_path)  # the data file is untouched: W's bytes stay where they are
    int8 = share_int8_embedding(model, folder) if fp32 is None else None
    if int8 is not None:
        done.append(int8)
        _resave_without_dropped(model, model_path)
        _map_rows(model_path, int8)
    for d in done:
        log.info("%s: %s", model_path, d.detail)
    return done


def _resave_without_dropped(model: Any, model_path: Path) -> None:
    """Write the graph and a new data file holding only the initializers still referenced
    (saved in a scratch folder beside it, then moved over the old pair)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    folder = model_path.parent
    old = {_ext(t).get("location", "") for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    data_name = min((x for x in old if x), default=model_path.name + ".data")
    load_external_data_for_model(model, str(folder))
    scratch = folder / ".tables-rewrite"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        onnx.save_model(model, str(scratch / model_path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        for stale in old - {data_name, ""}:
            (folder / stale).unlink(missing_ok=True)
        os.replace(scratch / data_name, folder / data_name)
        os.replace(scratch / model_path.name, model_path)
        (folder / data_name).chmod(0o644)  # onnx writes it 0600; the agent's service user reads it
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _map_rows(model_path: Path, done: TableRewrite) -> None:
    """Point the int8 rows input at the LM head initializer's bytes in the data file just written."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    q = next(t for t in model.graph.initializer if t.name == done.rows_of)
    rows = next(i for i in model.graph.input if i.name == done.mapped)
    info = _ext(q)
    shape = tuple(int(d.dim_value) for d in rows.type.tensor_type.shape.dim)
    entry = model.metadata_props.add()
    entry.key = METADATA_PREFIX + done.mapped
    entry.value = MappedInput(done.mapped, info["location"], int(info.get("offset", "0")), "uint8", shape).to_json()
    _save_graph(model, model_path)


def _save_graph(model: Any, model_path: Path) -> None:
    """The graph alone (its external data stays as it is), replacing the file atomically."""
    import onnx

    tmp = model_path.with_name(model_path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, model_path)
