"""ONNX import beyond ``rnncore.from_onnx``: list the recurrent nodes of any graph, and read a graph
or one of its nodes together with the mapping of its tensors (README.md, "ONNX"). The onnx package
is imported on use."""

from ._onnx import MAX_ELEMENTS, OnnxImport, RecurrentNode, find_recurrent, from_onnx, import_graph

__all__ = ["find_recurrent", "import_graph", "from_onnx", "OnnxImport", "RecurrentNode", "MAX_ELEMENTS"]
