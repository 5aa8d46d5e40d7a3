"""`python -m training.export`: a saved .keras generator to LiteRT / ONNX."""

import pytest

import tfgancompress as tgc
from training import export


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "g.keras"
    tgc.models.resnet_generator(ngf=4, n_blocks=1).save(path)
    return str(path)


def test_litert_and_onnx_match_keras(saved_model, tmp_path):
    litert = export.export(saved_model, str(tmp_path / "g.tflite"), size=64)
    onnx = export.export(saved_model, str(tmp_path / "g.onnx"), "onnx", size=64)
    assert litert <= 1e-4 and onnx <= 1e-4
    assert (tmp_path / "g.tflite").stat().st_size > 0
    int8 = export.export(
        saved_model,
        str(tmp_path / "g8.tflite"),
        quantization="int8",
        size=64,
        calibration_images=4,
    )
    assert 0.0 < int8 < 0.5


def test_bad_arguments(saved_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        export.export(str(tmp_path / "nope.keras"), str(tmp_path / "x.tflite"))
    with pytest.raises(ValueError, match="for LiteRT"):
        export.export(saved_model, str(tmp_path / "x.onnx"), "onnx", "int8")
    with pytest.raises(ValueError, match="format must be one of"):
        export.export(saved_model, str(tmp_path / "x"), "tfjs")
