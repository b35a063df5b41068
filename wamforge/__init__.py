"""wamforge: train World Action Models from raw data to an evaluated, exported policy."""

__version__ = "0.1.0"


def load_policy(directory, device=None, inference=None):
    """Load an exported policy (no DeepSpeed needed); see wamforge.evaluation.policy."""
    from wamforge.evaluation.policy import load_policy as _load

    return _load(directory, device=device, inference=inference)


__all__ = ["load_policy", "__version__"]
