"""Facts about CIFAR-10, defined once for training, evaluation, export and serving.

python -c "from cifarlab.constants import CLASSES; print(CLASSES)"
"""

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CLASSES)
IMAGE_SIZE = 32  # pixels, square

# Per-channel statistics of the 50,000 official training images on the 0-255 scale
# (checked against the real data in tests/test_data_real.py).
CIFAR_MEAN_255: tuple[float, float, float] = (125.31, 122.95, 113.87)
CIFAR_STD_255: tuple[float, float, float] = (62.99, 62.09, 66.70)
# The same on the 0-1 scale, as normalisation layers and ONNX metadata use them.
CIFAR_MEAN: tuple[float, float, float] = tuple(v / 255.0 for v in CIFAR_MEAN_255)  # type: ignore[assignment]
CIFAR_STD: tuple[float, float, float] = tuple(v / 255.0 for v in CIFAR_STD_255)  # type: ignore[assignment]
