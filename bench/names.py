"""The group titles and row labels that the benchmarks record and the report's headline reads."""

WINDOW = 100
"""The typical window of the benchmarks; window 1 (a window closes at every step) is measured beside it."""

OPERATIONS = ("forward", "update")

SCALAR = "scalar loss (0-dim float32)"
PER_SAMPLE = "per-sample loss (256 float32)"
ACCURACY_INPUTS = "MulticlassAccuracy inputs (256 samples, 10 classes)"

LIGHTNING = "Lightning training step"
MEMORY = "state memory"

FLOOR = "floor: acc.add_(loss)"
FLOOR_OF_SUM = "floor: acc.add_(loss.sum())"
HAND_WRITTEN = "hand-written: total += loss.item()"
MEAN_METRIC = "MeanMetric"
SUM_METRIC = "SumMetric"
MAX_METRIC = "MaxMetric"
MIN_METRIC = "MinMetric"
ACCURACY = "MulticlassAccuracy"


def group(operation: str, inputs: str) -> str:
    """Return the title of the group that times ``operation`` (``forward`` or ``update``) on ``inputs``."""
    return f"{operation}, {inputs}"


def windowed(name: str, window: int) -> str:
    """Return the label of a metric benchmarked at ``window``: ``"WindowedMean(window=100)"``."""
    return f"{name}(window={window})"


def wrapped(metric: str, window: int) -> str:
    """Return the label of a torchmetrics metric wrapped in ``Windowed``: ``"Windowed(MeanMetric(), window=100)"``."""
    return f"Windowed({metric}(), window={window})"


def running(metric: str, window: int) -> str:
    """Return the label of a metric wrapped in torchmetrics' ``Running``: ``"Running(MaxMetric(), window=100)"``."""
    return f"Running({metric}(), window={window})"


MEMORY_WINDOWS = (10, 100_000)
STATE_BYTES = "state bytes (state_dict)"
HEAP_BYTES = "Python heap bytes (tracemalloc)"

PACKED_ALL_REDUCE = "floor: all_reduce of the packed sums (4 float64)"


def synchronisation_group(world_size: int) -> str:
    """Return the title of the group that times a window's synchronisation across ``world_size`` gloo processes."""
    return f"a window's synchronisation, gloo, {world_size} processes"


DISPATCH_TITLE = "dispatched operators and host reads (the one path of every device)"
OPS_PER_UPDATE = "ops per update"
OPS_FIRST_UPDATE = "ops, first update"
READS_PER_UPDATE = "host reads per update"
OPS_AT_BOUNDARY = "ops at a boundary"
READS_AT_BOUNDARY = "host reads at a boundary"
SYNCHRONISED_COLLECTIVES = "collectives at a synchronised boundary"
READS_AT_SYNCHRONISED_BOUNDARY = "host reads at a synchronised boundary"
UPDATE_OPERATORS = "operators of an update"
OPS_OF_COMPUTE = "ops of compute()"
READS_OF_COMPUTE = "host reads of compute()"


def dispatch_group(inputs: str) -> str:
    """Return the title of the group that counts what an update dispatches on ``inputs``."""
    return f"{DISPATCH_TITLE}, {inputs}"
