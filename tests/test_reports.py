"""The PNG reports: each writes a real, non-blank picture, and denormalize undoes Normalize."""

import subprocess
import sys

import pytest
from PIL import Image

from cvkit.reports import denormalize, image_grid, plot_confusion_matrix, plot_curves

HISTORY = [
    {"epoch": 1, "train_loss": 1.30, "train_accuracy": 0.40, "val_loss": 1.10, "val_accuracy": 0.55},
    {"epoch": 2, "train_loss": 0.70, "train_accuracy": 0.75, "val_loss": 0.60, "val_accuracy": 0.85},
    {"epoch": 3, "train_loss": 0.40, "train_accuracy": 0.88, "val_loss": 0.50, "val_accuracy": 0.82},
]


def assert_png(path, min_width=200, min_height=150):
    """A decodable PNG of a reasonable size that is not one flat colour."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        assert img.width >= min_width and img.height >= min_height, img.size
        extrema = img.convert("RGB").getextrema()
        assert any(lo != hi for lo, hi in extrema), "the picture is one flat colour"


def test_plot_curves_writes_png_into_new_folder(tmp_path):
    out = plot_curves(HISTORY, tmp_path / "reports" / "curves.png")
    assert out == tmp_path / "reports" / "curves.png"
    assert_png(out, 600, 300)


def test_plot_curves_one_epoch_and_missing_val(tmp_path):
    assert_png(plot_curves(HISTORY[:1], tmp_path / "one.png"), 600, 300)
    no_val = [{k: v for k, v in row.items() if not k.startswith("val_")} for row in HISTORY]
    assert_png(plot_curves(no_val, tmp_path / "no_val.png"), 600, 300)


def test_plot_curves_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError):
        plot_curves([], tmp_path / "empty.png")


@pytest.mark.parametrize("n", [2, 25])
def test_confusion_matrix_sizes(tmp_path, n):
    matrix = [[10 if i == j else (i + j) % 3 for j in range(n)] for i in range(n)]
    out = plot_confusion_matrix(matrix, [f"class-{i}" for i in range(n)], tmp_path / f"cm{n}.png",
                                title="Validation")
    assert_png(out, 300, 300)


def test_confusion_matrix_handles_empty_rows(tmp_path):
    assert_png(plot_confusion_matrix([[0, 0], [1, 3]], ["a", "b"], tmp_path / "cm.png"))


def test_confusion_matrix_rejects_mismatched_classes(tmp_path):
    with pytest.raises(ValueError):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "cm.png")


def test_image_grid_mixes_pil_and_tensors_gray_and_rgb(tmp_path):
    import torch

    images = [
        Image.new("L", (20, 20), 40),
        Image.linear_gradient("L").resize((24, 24)).convert("RGB"),
        torch.rand(1, 16, 16),
        torch.rand(3, 16, 16),
        torch.rand(16, 16),
    ]
    labels = ["gray PIL", "rgb PIL", "cat 0.91\n(true: dog)", "rgb tensor", "HxW tensor"]
    out = image_grid(images, labels, tmp_path / "grid.png",
                     colors=["green", "green", "red", "green", "green"], title="mixed")
    assert_png(out)


def test_image_grid_one_image(tmp_path):
    assert_png(image_grid([Image.linear_gradient("L")], ["only"], tmp_path / "one.png"), 100, 100)


def test_image_grid_many_images(tmp_path):
    import torch

    images = [torch.rand(3, 8, 8) for _ in range(64)]
    out = image_grid(images, [str(i) for i in range(64)], tmp_path / "many.png", ncols=8)
    assert_png(out, 800, 800)


def test_image_grid_rejects_mismatched_labels(tmp_path):
    with pytest.raises(ValueError):
        image_grid([Image.new("L", (8, 8))] * 2, ["one"], tmp_path / "bad.png")


@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,), (0.5,))])
def test_denormalize_inverts_normalize(mean, std):
    import torch
    from torchvision.transforms import Normalize

    pixels = torch.rand(len(mean), 12, 10)
    restored = denormalize(Normalize(mean, std)(pixels), mean, std)
    assert restored.shape == pixels.shape
    assert torch.allclose(restored, pixels, atol=1e-6)


def test_denormalize_clamps_to_unit_range():
    import torch

    out = denormalize(torch.tensor([[[-5.0, 5.0]]]), (0.5,), (0.5,))
    assert out.tolist() == [[[0.0, 1.0]]]


def test_import_is_cheap():
    """The command line imports cvkit.reports at start-up: it must not pull in torch or matplotlib."""
    code = ("import sys, cvkit.reports; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
