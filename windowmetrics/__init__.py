"""Windowed torchmetrics: a loss or metric smoothed over windows of n batches, correct across processes."""

from windowmetrics.ema import EMALoss
from windowmetrics.extremes import WindowedMax, WindowedMin
from windowmetrics.mean import WindowedMean
from windowmetrics.sum import WindowedSum
from windowmetrics.windowed import Windowed

__version__ = "0.1.0.dev0"

__all__ = ["EMALoss", "Windowed", "WindowedMax", "WindowedMean", "WindowedMin", "WindowedSum", "__version__"]
