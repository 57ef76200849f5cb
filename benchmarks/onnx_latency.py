"""11. CPU inference: maskopt's ONNX graph on onnxruntime against its PyTorch prediction path.

Both sides turn the same uint8 pixels into class probabilities, on the CPU with ``cfg.threads``
threads: PyTorch through ``predict_rows`` (what ``maskopt predict`` runs: channels-last,
``inference_mode``, normalise, softmax), onnxruntime through the exported graph (normalisation and
softmax inside it). Each measurement predicts the same 32 images, one at a time (batch 1, a single
request) or as one batch of 32. Weights are random (speed does not depend on their values), so no
weights need installing; each graph is checked against PyTorch first (``verify_onnx``). Figures
only: the ratio says how much faster the ONNX file runs, there is no target.
"""

from __future__ import annotations

import numpy as np

import benchmarks as B

NAME = "onnx"
TITLE = "CPU inference: onnxruntime (exported graph) vs PyTorch (maskopt predict), images/s"
CASES = (("tf_efficientnet_lite0", 80), ("tf_efficientnet_lite0", 224), ("resnet18", 224),
         ("mobilenetv3_large_100", 224))
BATCHES = (1, 32)
IMAGES = 32


def run(cfg: B.Config) -> B.Report:
    import torch

    from maskopt.search.export.onnx import export_onnx, verify_onnx
    from maskopt.search.export.onnx_runtime import INPUT_NAME, onnx_session
    from maskopt.search.train.loop import normalisation, predict_rows
    from maskopt.search.train.models import build_model

    reps = 2 if cfg.quick else 7
    cpu = torch.device("cpu")
    report = B.Report(NAME, TITLE, settings={
        "cases": [list(c) for c in CASES], "batch_sizes": list(BATCHES), "images_per_measurement": IMAGES,
        "repetitions": reps, "warmup_repetitions": 1, "threads": cfg.threads, "onnx_opset": 17})
    for backbone, size in CASES:
        torch.manual_seed(cfg.seed)
        model = build_model(backbone, num_classes=18).eval()
        path = export_onnx(model, cfg.workdir / f"{backbone}-{size}.onnx", image_size=size)
        model = model.to(memory_format=torch.channels_last)  # as load_export loads it
        pixels = np.random.default_rng(cfg.seed).integers(0, 256, (IMAGES, 3, size, size), dtype=np.uint8)
        check = verify_onnx(model, path, pixels, threads=cfg.threads)
        session = onnx_session(path, num_classes=18, image_size=size, threads=cfg.threads)
        images = torch.from_numpy(pixels)
        mean, std = normalisation(model, cpu)
        report.details[f"{backbone}-{size}"] = {"check": check.to_dict(), "onnx_bytes": path.stat().st_size}
        cfg.log(f"{backbone} {size}px: ONNX scores within {check.max_abs_score_diff:.2g} of PyTorch's, "
                f"top-1 agreement {check.top1_agreement:.0%}")

        for batch in BATCHES:
            def with_torch(batch=batch, model=model, images=images, mean=mean, std=std):
                with B.Timer() as t:
                    predict_rows(model, images, np.arange(IMAGES), cpu, mean, std, batch_size=batch, channels_last=True)
                return t.seconds

            def with_onnx(batch=batch, session=session, pixels=pixels):
                with B.Timer() as t:
                    for start in range(0, IMAGES, batch):
                        session.run(["probs"], {INPUT_NAME: pixels[start:start + batch]})
                return t.seconds

            times = B.alternate({"onnxruntime": with_onnx, "pytorch": with_torch}, reps=reps, warmup=1,
                                debug=cfg.debug)
            fast, slow = IMAGES / B.median(times["onnxruntime"]), IMAGES / B.median(times["pytorch"])
            r = B.paired_ratio(times["pytorch"], times["onnxruntime"])
            report.add(f"{backbone} {size}px, batch {batch}", fast, slow, "PyTorch", unit="img/s", ratio=r,
                       ratio_label="onnxruntime/PyTorch")
            report.details[f"{backbone}-{size}"][f"batch {batch} seconds"] = times
            cfg.log(f"{backbone} {size}px batch {batch}: onnxruntime {fast:.0f} img/s, PyTorch {slow:.0f} img/s, "
                    f"ratio {r:.2f}")
    report.notes.append(f"{cfg.threads} thread(s) per side; images/s over {IMAGES} images per measurement, "
                        f"median of {reps} after a warm-up; both sides from uint8 pixels to probabilities")
    return report
