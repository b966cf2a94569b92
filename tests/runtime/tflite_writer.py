"""Write small float TFLite models without TensorFlow (flatbuffers + the schema's slot numbers).

Enough of schema.fbs for a tiny class-conditional image generator: FULLY_CONNECTED, ADD,
LOGISTIC, TANH. Used by the runtime tests to check the TFLite engine against ONNX Runtime
on the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np

# schema.fbs enums
FLOAT32 = 0
OP_ADD, OP_FULLY_CONNECTED, OP_LOGISTIC, OP_TANH = 0, 9, 14, 28
OPTIONS_FULLY_CONNECTED, OPTIONS_ADD = 8, 11
ACT_NONE, ACT_RELU = 0, 1


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None


@dataclass
class _Op:
    code: int
    inputs: list[int]
    outputs: list[int]
    options_type: int = 0
    activation: int = ACT_NONE


@dataclass
class TFLiteGraph:
    tensors: list[_Tensor] = field(default_factory=list)
    ops: list[_Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def tensor(self, name: str, shape: tuple[int, ...], data: np.ndarray | None = None) -> int:
        self.tensors.append(_Tensor(name, shape, None if data is None else data.astype(np.float32)))
        return len(self.tensors) - 1

    def op(
        self,
        code: int,
        inputs: list[int],
        out_name: str,
        out_shape: tuple[int, ...],
        options_type: int = 0,
        activation: int = ACT_NONE,
    ) -> int:
        out = self.tensor(out_name, out_shape)
        self.ops.append(_Op(code, inputs, [out], options_type, activation))
        return out

    def dense(self, x: int, weight: np.ndarray, bias: np.ndarray | None, name: str, activation: int = ACT_NONE) -> int:
        """y = x @ weight + bias, weight [in, out] (stored transposed, as TFLite wants)."""
        w = self.tensor(name + "/w", weight.T.shape, np.ascontiguousarray(weight.T))
        ins = [x, w, -1 if bias is None else self.tensor(name + "/b", bias.shape, bias)]
        batch = self.tensors[x].shape[0]
        return self.op(OP_FULLY_CONNECTED, ins, name, (batch, weight.shape[1]), OPTIONS_FULLY_CONNECTED, activation)

    def to_bytes(self) -> bytes:
        b = flatbuffers.Builder(1024)

        def ivec(values: list[int]) -> int:
            b.StartVector(4, len(values), 4)
            for v in reversed(values):
                b.PrependInt32(v)
            return b.EndVector()

        def offvec(offsets: list[int]) -> int:
            b.StartVector(4, len(offsets), 4)
            for o in reversed(offsets):
                b.PrependUOffsetTRelative(o)
            return b.EndVector()

        # buffers: 0 is the empty sentinel, then one per tensor (empty for activations)
        buffers = []
        for t in [None, *self.tensors]:
            data_off = None
            if t is not None and t.data is not None:
                raw = t.data.tobytes()
                b.StartVector(1, len(raw), 16)
                b.head = b.head - len(raw)
                b.Bytes[b.head : b.head + len(raw)] = raw
                data_off = b.EndVector()
            b.StartObject(3)
            if data_off is not None:
                b.PrependUOffsetTRelativeSlot(0, data_off, 0)
            buffers.append(b.EndObject())
        tensors = []
        for i, t in enumerate(self.tensors):
            name = b.CreateString(t.name)
            shape = ivec(list(t.shape))
            b.StartObject(8)
            b.PrependUOffsetTRelativeSlot(0, shape, 0)
            b.PrependInt8Slot(1, FLOAT32, 0)
            b.PrependUint32Slot(2, i + 1, 0)
            b.PrependUOffsetTRelativeSlot(3, name, 0)
            tensors.append(b.EndObject())
        ops = []
        for op in self.ops:
            options = 0
            if op.options_type:
                b.StartObject(4)
                b.PrependInt8Slot(0, op.activation, 0)
                options = b.EndObject()
            ins, outs = ivec(op.inputs), ivec(op.outputs)
            b.StartObject(9)
            b.PrependUint32Slot(0, self._codes().index(op.code), 0)
            b.PrependUOffsetTRelativeSlot(1, ins, 0)
            b.PrependUOffsetTRelativeSlot(2, outs, 0)
            if op.options_type:
                b.PrependUint8Slot(3, op.options_type, 0)
                b.PrependUOffsetTRelativeSlot(4, options, 0)
            ops.append(b.EndObject())
        codes = []
        for code in self._codes():
            b.StartObject(4)
            b.PrependInt8Slot(0, min(code, 127), 0)
            b.PrependInt32Slot(2, 1, 1)
            b.PrependInt32Slot(3, code, 0)
            codes.append(b.EndObject())
        t_vec, o_vec = offvec(tensors), offvec(ops)
        in_vec, out_vec = ivec(self.inputs), ivec(self.outputs)
        sg_name = b.CreateString("main")
        b.StartObject(5)
        b.PrependUOffsetTRelativeSlot(0, t_vec, 0)
        b.PrependUOffsetTRelativeSlot(1, in_vec, 0)
        b.PrependUOffsetTRelativeSlot(2, out_vec, 0)
        b.PrependUOffsetTRelativeSlot(3, o_vec, 0)
        b.PrependUOffsetTRelativeSlot(4, sg_name, 0)
        subgraph = b.EndObject()
        codes_vec, sg_vec, buf_vec = offvec(codes), offvec([subgraph]), offvec(buffers)
        desc = b.CreateString("fleetgen test model")
        b.StartObject(5)
        b.PrependUint32Slot(0, 3, 0)
        b.PrependUOffsetTRelativeSlot(1, codes_vec, 0)
        b.PrependUOffsetTRelativeSlot(2, sg_vec, 0)
        b.PrependUOffsetTRelativeSlot(3, desc, 0)
        b.PrependUOffsetTRelativeSlot(4, buf_vec, 0)
        model = b.EndObject()
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())

    def _codes(self) -> list[int]:
        return sorted({op.code for op in self.ops})
