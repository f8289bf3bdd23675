"""Argument checks the reference models share."""


def check_no_weights(weights) -> None:
    """The builders take torchvision's ``weights`` argument so calls written
    for torchvision run unchanged, but download nothing: load torchvision's
    state dict into the model instead (the keys are the same)."""
    if weights is not None:
        raise ValueError(f"weights must be None (cnnkernels downloads no weights; load a "
                         f"torchvision state_dict with model.load_state_dict), got {weights!r}")


def check_probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)
