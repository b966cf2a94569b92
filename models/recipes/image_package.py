"""Image model folders: train the digits CVAE, export its decoder (ONNX, TFLite fp32,
TFLite int8), measure classifier agreement and ONNX-vs-TFLite pixel differences, write
manifest.json, MODEL_CARD.md, quality.json and a sample sheet per folder."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agent.manifest import ImageSpec, ModelManifest, SelfTest, file_entries, write_manifest
from agent.runtime.png import encode_png
from models.recipes import image_model as im
from models.recipes import image_tflite

log = logging.getLogger(__name__)

VERSION = "1.0.0"
IMAGE_DIR = Path(__file__).resolve().parents[1] / "image"
SAMPLES_PER_CLASS = 100
LICENSE = "MIT (weights, fleetgen); data: scikit-learn digits (UCI optdigits, CC BY 4.0)"
# What the tests hold the shipped files to (ONNX output as the reference).
DECODER_PARAMS = (
    (im.NUM_CLASSES + im.LATENT + 1) * im.HIDDEN + (im.HIDDEN + 1) * im.HIDDEN
    + (im.HIDDEN + 1) * im.SIDE * im.SIDE
)
TOLERANCE = {"tflite_fp32_max_abs": 1e-4, "tflite_int8_mean_abs": 0.02}


@dataclass(frozen=True)
class Folder:
    name: str
    engine: str
    model: str
    quantization: str


FOLDERS = (
    Folder(f"{im.NAME}-onnx", "onnxruntime", "model.onnx", "fp32"),
    Folder(f"{im.NAME}-tflite", "tflite", "model.tflite", "fp32"),
    Folder(f"{im.NAME}-tflite-int8", "tflite", "model.tflite", "int8"),
)


@dataclass(frozen=True)
class ImageQuality:
    classifier: str
    classifier_test_accuracy: float
    samples_per_class: int
    agreement: dict[str, float]
    mean_abs_diff_vs_onnx: dict[str, float]
    max_abs_diff_vs_onnx: dict[str, float]
    tolerance: dict[str, float]


def eval_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SAMPLES_PER_CLASS latents per class (the first one zero), fixed seed."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(im.NUM_CLASSES), SAMPLES_PER_CLASS)
    z = rng.standard_normal((len(labels), im.LATENT)).astype(np.float32)
    z[::SAMPLES_PER_CLASS] = 0.0
    return im.one_hot(labels), z


def run_onnx(path: Path, label: np.ndarray, z: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["image"], {"label": label, "z": z})[0])


def run_tflite(path: Path, label: np.ndarray, z: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    inputs = {d["name"]: d["index"] for d in interp.get_input_details()}
    interp.resize_tensor_input(inputs["label"], list(label.shape))
    interp.resize_tensor_input(inputs["z"], list(z.shape))
    interp.allocate_tensors()
    interp.set_tensor(inputs["label"], label)
    interp.set_tensor(inputs["z"], z)
    interp.invoke()
    return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]))


def _classifier(digits: im.Digits) -> tuple[object, float]:
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.images, digits.labels, test_size=0.3, random_state=0, stratify=digits.labels
    )
    clf = SVC(gamma=0.03, C=10.0).fit(x_tr, y_tr)
    return clf, float(clf.score(x_te, y_te))


def sample_sheet(images: np.ndarray, per_row: int = 10, scale: int = 4) -> bytes:
    """Grid of the first `per_row` samples of every class, upscaled, dark ink on white."""
    rows = []
    for c in range(im.NUM_CLASSES):
        block = images[c * SAMPLES_PER_CLASS : c * SAMPLES_PER_CLASS + per_row, :, :, 0]
        block = np.pad(block, ((0, 0), (1, 1), (1, 1)))
        rows.append(np.concatenate(list(block), axis=1))
    grid = np.concatenate(rows, axis=0)
    grid = np.kron(grid, np.ones((scale, scale), dtype=np.float32))
    return encode_png((255 - np.clip(grid, 0, 1) * 255).round().astype(np.uint8))


def build_all() -> ImageQuality:
    digits = im.load_digits()
    dec = im.train_cvae(digits)
    paths = {f.name: IMAGE_DIR / f.name / f.model for f in FOLDERS}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    onnx_f, tfl_f, tfl_q = FOLDERS
    im.export_onnx(dec, paths[onnx_f.name])
    layers = im.decoder_weights(dec)
    paths[tfl_f.name].write_bytes(
        image_tflite.float_model(layers, im.NUM_CLASSES, im.LATENT, im.SIDE)
    )
    cal_label, cal_z = eval_inputs(seed=1)
    quants = image_tflite.calibrate(layers, np.concatenate([cal_label, cal_z], axis=1))
    paths[tfl_q.name].write_bytes(
        image_tflite.int8_model(layers, quants, im.NUM_CLASSES, im.LATENT, im.SIDE)
    )
    label, z = eval_inputs(seed=0)
    outputs = {
        onnx_f.name: run_onnx(paths[onnx_f.name], label, z),
        tfl_f.name: run_tflite(paths[tfl_f.name], label, z),
        tfl_q.name: run_tflite(paths[tfl_q.name], label, z),
    }
    clf, accuracy = _classifier(digits)
    wanted = label.argmax(axis=1)
    ref = outputs[onnx_f.name]
    quality = ImageQuality(
        classifier="sklearn SVC(gamma=0.03, C=10) on 70% of digits",
        classifier_test_accuracy=round(accuracy, 4),
        samples_per_class=SAMPLES_PER_CLASS,
        agreement={
            name: round(float((clf.predict(out.reshape(len(out), -1)) == wanted).mean()), 4)  # type: ignore[attr-defined]
            for name, out in outputs.items()
        },
        mean_abs_diff_vs_onnx={
            name: float(f"{np.abs(out - ref).mean():.3g}") for name, out in outputs.items()
        },
        max_abs_diff_vs_onnx={
            name: float(f"{np.abs(out - ref).max():.3g}") for name, out in outputs.items()
        },
        tolerance=TOLERANCE,
    )
    log.info("image quality: %s", quality)
    for folder in FOLDERS:
        root = IMAGE_DIR / folder.name
        (root / "samples.png").write_bytes(sample_sheet(outputs[folder.name]))
        (root / "quality.json").write_text(json.dumps(asdict(quality), indent=2) + "\n")
        (root / "MODEL_CARD.md").write_text(model_card(folder, quality, paths))
        _write_manifest(root, folder)
    return quality


def _write_manifest(root: Path, folder: Folder) -> None:
    files = [folder.model, "MODEL_CARD.md", "quality.json", "samples.png"]
    manifest = ModelManifest(
        name=folder.name,
        version=VERSION,
        task="image-generation",
        engine=folder.engine,  # type: ignore[arg-type]
        model=folder.model,
        files=file_entries(root, files),
        quantization=folder.quantization,  # type: ignore[arg-type]
        boards=["*"],
        min_ram_mb=64,
        self_test=SelfTest(image_class=3),
        image=ImageSpec(
            width=im.SIDE,
            height=im.SIDE,
            channels=1,
            num_classes=im.NUM_CLASSES,
            latent_dim=im.LATENT,
            pixel_range="0,1",
        ),
        license=LICENSE,
        description=(
            "Class-conditional 8x8 digit generator (decoder of a conditional VAE). Inputs: "
            "label float32 [batch, 10] one-hot, z float32 [batch, 8] standard normal. "
            "Output: image float32 [batch, 8, 8, 1], ink intensity in [0, 1]."
        ),
    )
    write_manifest(root, manifest)


def model_card(folder: Folder, q: ImageQuality, paths: dict[str, Path]) -> str:
    rows = "\n".join(
        f"| {f.name} | {f.engine} {f.quantization} | {paths[f.name].stat().st_size / 1024:.1f} KiB"
        f" | {q.agreement[f.name] * 100:.1f}% | {q.mean_abs_diff_vs_onnx[f.name]:.3g}"
        f" | {q.max_abs_diff_vs_onnx[f.name]:.3g} |"
        for f in FOLDERS
    )
    return f"""# {folder.name}

A class-conditional generator of 8x8 handwritten digits: the decoder of a conditional
variational autoencoder trained by fleetgen on scikit-learn's digits data set. It is the
image model fleetgen ships so that image generation works on any board; this folder
holds the **{folder.engine} {folder.quantization}** variant (`{folder.model}`).

## Inputs and output

- `label`: float32 [batch, 10], one-hot class (digit 0-9).
- `z`: float32 [batch, 8], latent drawn from a standard normal (the runtime draws it
  from the request's seed); zeros give the class's typical digit.
- `image`: float32 [batch, 8, 8, 1] (NHWC), ink intensity in [0, 1] (`pixel_range`
  "0,1" in the manifest; 1 = ink). `samples.png` shows 10 samples per class
  (dark = ink, upscaled 4x).

## Data and license

- Data: `sklearn.datasets.load_digits()` (1,797 images, 8x8, 0-16 grey levels), a copy
  of the UCI "Optical Recognition of Handwritten Digits" test set, CC BY 4.0 (Alpaydin
  and Kaynak); shipped inside the scikit-learn package (BSD-3-Clause).
- Weights: fleetgen's, under MIT.

## Model

- Decoder: concat(label, z) [18] → 128 ReLU → 128 ReLU → 64 sigmoid → 8x8x1
  ({DECODER_PARAMS:,} parameters).
  Encoder (training only): concat(image, label) → 128 ReLU → mean and log-variance of z.
- Training: Bernoulli likelihood + KL to N(0, I), Adam 2e-3, 4,000 steps of 128,
  seed {im.SEED}, PyTorch on 2 CPU threads, about a minute.
- ONNX: `torch.onnx.export` (opset 17, dynamic batch). TFLite: written directly from the
  numpy weights with the `tflite` schema package (docs/adr/0017). int8 TFLite is full
  integer: QUANTIZE → three int8 FULLY_CONNECTED (weights symmetric per tensor, int32
  biases) → DEQUANTIZE → LOGISTIC, activation ranges calibrated on 1,000 float runs;
  input and output stay float32, so the same caller code runs every variant.

## Quality

Classifier agreement: {q.samples_per_class} samples per class (fixed seed) classified by
{q.classifier} (test accuracy on real digits {q.classifier_test_accuracy * 100:.1f}%); the share
classified as the class that was asked for. Pixel differences are against the ONNX
output on the same inputs.

| folder | engine | file | agreement | mean abs diff | max abs diff |
|---|---|---|---|---|---|
{rows}

Tolerances the tests hold the shipped files to: TFLite fp32 max abs difference ≤
{q.tolerance["tflite_fp32_max_abs"]}, TFLite int8 mean abs difference ≤ {q.tolerance["tflite_int8_mean_abs"]}.

## Rebuild

`make models`, or `python -m models.build` (the image recipe alone: about a minute).
"""
