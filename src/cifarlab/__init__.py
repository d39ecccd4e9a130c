"""cifarlab: CIFAR-10 classification from data to deployment.

cifarlab data prepare --source path/to/cifar-10-batches-bin
cifarlab eda
"""

__version__ = "0.1.0"
