"""The TensorRT API surfaces in tests/data come from NVIDIA's pybind11 sources through the extractor, which reads
the binding idioms those sources use."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from extract_trt_surface import extract, parse_bindings  # noqa: E402

BINDINGS = r'''
void bindCore(py::module& m)
{
    py::class_<ILogger, PyLogger> baseLoggerBinding{m, "ILogger", ILoggerDoc::descr, py::module_local()};
    py::enum_<ILogger::Severity>(baseLoggerBinding, "Severity", py::arithmetic())
        .value("ERROR", ILogger::Severity::kERROR) // a comment with "quotes"
        .value("WARNING", ILogger::Severity::kWARNING)
        .export_values();
    baseLoggerBinding.def(py::init<>()).def("log", &ILogger::log, "severity"_a, "msg"_a);
    py::class_<DefaultLogger, ILogger>(m, "Logger")
        .def(py::init<ILogger::Severity>(), "min_severity"_a = ILogger::Severity::kWARNING)
        .def_readwrite("min_severity", &DefaultLogger::mMinSeverity);
    /* py::class_<Ignored>(m, "Ignored"); */
    py::class_<IRuntime>(m, "Runtime")
        .def("deserialize_cuda_engine", [](IRuntime& self, py::buffer b) { auto x = 1; return x; }, "data"_a)
        .def_property("DLA_core", &IRuntime::getDLACore, &IRuntime::setDLACore);
    m.attr("float32") = DataType::kFLOAT;
    m.def("get_plugin_registry", &getPluginRegistry);
}
'''


def test_extractor_reads_classes_enums_properties_and_module_names():
    surface = {"module": {}, "classes": {}, "enums": {}}
    parse_bindings(BINDINGS, surface)
    assert surface["enums"] == {"ILogger.Severity": {"ERROR": 0, "WARNING": 1}}
    assert surface["classes"]["ILogger"]["attributes"] == {
        "Severity": "enum", "ERROR": "value", "WARNING": "value", "__init__": "method", "log": "method"}
    assert surface["classes"]["Logger"] == {"bases": ["ILogger"], "attributes": {
        "__init__": "method", "min_severity": "property"}}
    assert surface["classes"]["Runtime"]["attributes"] == {"deserialize_cuda_engine": "method",
                                                           "DLA_core": "property"}
    assert "Ignored" not in surface["classes"]
    assert surface["module"] == {"float32": "value", "get_plugin_registry": "function"}


@pytest.mark.parametrize("tag, data", [("v10.3.0", "tensorrt_10.3.json"), ("v11.1", "tensorrt_11.1.json")])
def test_committed_surfaces_match_nvidia_sources(tag, data):
    """Set OFFSEG_TENSORRT_SOURCES to a git clone of github.com/NVIDIA/TensorRT to re-extract and compare."""
    sources = os.environ.get("OFFSEG_TENSORRT_SOURCES")
    if not sources:
        pytest.skip("OFFSEG_TENSORRT_SOURCES (a NVIDIA/TensorRT git clone) is not set")
    if subprocess.run(["git", "-C", sources, "rev-parse", tag], capture_output=True).returncode:
        pytest.skip(f"{sources} has no tag {tag}")
    assert extract(Path(sources), tag) == json.loads((DATA / data).read_text())
