"""After the search: retrain and bundle the best (``bundle.py``), an export's typed config.json
(``config.py``), its ONNX graph (``onnx.py``, run by ``onnx_runtime.py``), predict with an export
(``predict.py``), score a submission (``score.py``)."""

from maskopt.search.export.bundle import (
    CalibrationReport,
    EnsembleReport,
    ExportResult,
    OnnxExportResult,
    export_best,
    export_onnx_folder,
)
from maskopt.search.export.config import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EnsembleConfig,
    ExportConfig,
    MemberRef,
    OnnxCheck,
    OnnxFile,
    OnnxPreprocessing,
    read_export_config,
)
from maskopt.search.export.predict import (
    SUBMISSION_FILE,
    predict,
    predict_images,
    predict_probs,
)
from maskopt.search.export.score import Score, score

__all__ = ["CONFIG_FILE", "EXPORT_FORMAT", "SUBMISSION_FILE", "CalibrationReport", "EnsembleConfig", "EnsembleReport",
           "ExportConfig", "ExportResult", "MemberRef", "OnnxCheck", "OnnxExportResult", "OnnxFile",
           "OnnxPreprocessing", "Score", "export_best", "export_onnx_folder", "predict", "predict_images",
           "predict_probs", "read_export_config", "score"]
