"""Write a TFLite flatbuffer from numpy weights, with the schema bindings of the `tflite`
package. Enough for small feed-forward graphs (FULLY_CONNECTED, CONCATENATION, LOGISTIC,
RESHAPE, QUANTIZE, DEQUANTIZE), float or int8-quantized. Why not the TensorFlow
converter: docs/adr/0017-tflite-written-from-numpy.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.TensorType import TensorType

_TYPES = {
    np.dtype(np.float32): TensorType.FLOAT32,
    np.dtype(np.int8): TensorType.INT8,
    np.dtype(np.int32): TensorType.INT32,
}
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Quant:
    """Affine int8 quantization: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    buffer: int
    quant: Quant | None
    signature: tuple[int, ...] | None


@dataclass
class _Op:
    code: int
    inputs: list[int]
    outputs: list[int]
    options_type: int
    options: Callable[[flatbuffers.Builder], int] | None


@dataclass
class GraphBuilder:
    """Collects tensors and operators, then serialises one subgraph model."""

    description: str = "fleetgen"
    tensors: list[_Tensor] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])
    ops: list[_Op] = field(default_factory=list)

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: type | np.dtype = np.float32,
        data: np.ndarray | None = None,
        quant: Quant | None = None,
        dynamic_batch: bool = False,
    ) -> int:
        buffer = 0
        if data is not None:
            if data.shape != shape or data.dtype != np.dtype(dtype):
                raise ValueError(f"tensor {name}: data {data.shape} {data.dtype} != {shape} {dtype}")
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buffer = len(self.buffers) - 1
        signature = (-1, *shape[1:]) if dynamic_batch else None
        self.tensors.append(_Tensor(name, shape, np.dtype(dtype), buffer, quant, signature))
        return len(self.tensors) - 1

    def op(
        self,
        code: int,
        inputs: list[int],
        outputs: list[int],
        options_type: int = BuiltinOptions.NONE,
        options: Callable[[flatbuffers.Builder], int] | None = None,
    ) -> None:
        self.ops.append(_Op(code, inputs, outputs, options_type, options))

    def serialize(self, inputs: list[int], outputs: list[int]) -> bytes:
        b = flatbuffers.Builder(1024)
        codes = sorted({op.code for op in self.ops})
        buffers = [_buffer(b, data) for data in self.buffers]
        tensors = [_tensor(b, t) for t in self.tensors]
        ops = [_operator(b, op, codes.index(op.code)) for op in self.ops]
        opcodes = [_opcode(b, code) for code in codes]
        name = b.CreateString("main")
        subgraph_tensors = _offsets(b, tflite.SubGraphStartTensorsVector, tensors)
        subgraph_inputs = _ints(b, tflite.SubGraphStartInputsVector, inputs)
        subgraph_outputs = _ints(b, tflite.SubGraphStartOutputsVector, outputs)
        subgraph_ops = _offsets(b, tflite.SubGraphStartOperatorsVector, ops)
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, subgraph_tensors)
        tflite.SubGraphAddInputs(b, subgraph_inputs)
        tflite.SubGraphAddOutputs(b, subgraph_outputs)
        tflite.SubGraphAddOperators(b, subgraph_ops)
        tflite.SubGraphAddName(b, name)
        subgraph = tflite.SubGraphEnd(b)
        description = b.CreateString(self.description)
        model_codes = _offsets(b, tflite.ModelStartOperatorCodesVector, opcodes)
        model_subgraphs = _offsets(b, tflite.ModelStartSubgraphsVector, [subgraph])
        model_buffers = _offsets(b, tflite.ModelStartBuffersVector, buffers)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(b, model_codes)
        tflite.ModelAddSubgraphs(b, model_subgraphs)
        tflite.ModelAddDescription(b, description)
        tflite.ModelAddBuffers(b, model_buffers)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _offsets(b: flatbuffers.Builder, start: Callable[..., object], items: list[int]) -> int:
    start(b, len(items))
    for item in reversed(items):
        b.PrependUOffsetTRelative(item)
    return int(b.EndVector())


def _ints(b: flatbuffers.Builder, start: Callable[..., object], items: list[int]) -> int:
    start(b, len(items))
    for item in reversed(items):
        b.PrependInt32(item)
    return int(b.EndVector())


def _buffer(b: flatbuffers.Builder, data: bytes) -> int:
    vector = None
    if data:
        # 16-byte alignment so the interpreter can map weights in place.
        b.StartVector(1, len(data), 16)
        b.head -= len(data)
        b.Bytes[b.head : b.head + len(data)] = data
        vector = b.EndVector()
    tflite.BufferStart(b)
    if vector is not None:
        tflite.BufferAddData(b, vector)
    return int(tflite.BufferEnd(b))


def _tensor(b: flatbuffers.Builder, t: _Tensor) -> int:
    name = b.CreateString(t.name)
    shape = _ints(b, tflite.TensorStartShapeVector, list(t.shape))
    signature = _ints(b, tflite.TensorStartShapeSignatureVector, list(t.signature)) if t.signature else None
    quant = None
    if t.quant is not None:
        tflite.QuantizationParametersStartScaleVector(b, 1)
        b.PrependFloat32(t.quant.scale)
        scale = b.EndVector()
        tflite.QuantizationParametersStartZeroPointVector(b, 1)
        b.PrependInt64(t.quant.zero_point)
        zero_point = b.EndVector()
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale)
        tflite.QuantizationParametersAddZeroPoint(b, zero_point)
        quant = tflite.QuantizationParametersEnd(b)
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, _TYPES[t.dtype])
    tflite.TensorAddBuffer(b, t.buffer)
    tflite.TensorAddName(b, name)
    if quant is not None:
        tflite.TensorAddQuantization(b, quant)
    if signature is not None:
        tflite.TensorAddShapeSignature(b, signature)
    return int(tflite.TensorEnd(b))


def _operator(b: flatbuffers.Builder, op: _Op, opcode_index: int) -> int:
    options = op.options(b) if op.options is not None else None
    inputs = _ints(b, tflite.OperatorStartInputsVector, op.inputs)
    outputs = _ints(b, tflite.OperatorStartOutputsVector, op.outputs)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, opcode_index)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, op.options_type)
        tflite.OperatorAddBuiltinOptions(b, options)
    return int(tflite.OperatorEnd(b))


def _opcode(b: flatbuffers.Builder, code: int) -> int:
    tflite.OperatorCodeStart(b)
    # Codes below 127 also go in the deprecated int8 field, which older runtimes read.
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddVersion(b, 1)
    return int(tflite.OperatorCodeEnd(b))


def fully_connected_options(relu: bool) -> Callable[[flatbuffers.Builder], int]:
    def build(b: flatbuffers.Builder) -> int:
        tflite.FullyConnectedOptionsStart(b)
        act = ActivationFunctionType.RELU if relu else ActivationFunctionType.NONE
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, act)
        return int(tflite.FullyConnectedOptionsEnd(b))

    return build


def concatenation_options(axis: int) -> Callable[[flatbuffers.Builder], int]:
    def build(b: flatbuffers.Builder) -> int:
        tflite.ConcatenationOptionsStart(b)
        tflite.ConcatenationOptionsAddAxis(b, axis)
        return int(tflite.ConcatenationOptionsEnd(b))

    return build


def reshape_options(shape: list[int]) -> Callable[[flatbuffers.Builder], int]:
    def build(b: flatbuffers.Builder) -> int:
        new_shape = _ints(b, tflite.ReshapeOptionsStartNewShapeVector, shape)
        tflite.ReshapeOptionsStart(b)
        tflite.ReshapeOptionsAddNewShape(b, new_shape)
        return int(tflite.ReshapeOptionsEnd(b))

    return build


__all__ = ["BuiltinOperator", "BuiltinOptions", "GraphBuilder", "Quant"]
