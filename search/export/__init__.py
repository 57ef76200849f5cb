"""After the search: retrain and bundle the best (``bundle.py``), predict with a bundle
(``predict.py``), score a submission (``score.py``)."""

from maskopt.search.export.bundle import (
    EXPORT_ATTR,
    CalibrationReport,
    EnsembleReport,
    ExportResult,
    export_best,
)
from maskopt.search.export.predict import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    SUBMISSION_FILE,
    predict,
    predict_images,
    predict_probs,
    read_config,
)
from maskopt.search.export.score import Score, score_submission

__all__ = ["EXPORT_ATTR", "CONFIG_FILE", "EXPORT_FORMAT", "SUBMISSION_FILE", "CalibrationReport", "EnsembleReport",
           "ExportResult", "Score", "export_best", "predict", "predict_images", "predict_probs", "read_config",
           "score_submission"]
