"""The one error a checkpoint that cannot be used raises, in a module of its own: checkpoints.py reads files with
the help of hub.py and stored_state.py, and those raise it too, so it cannot live in checkpoints.py without an
import circle. ``iggt_lightning.checkpoints.CheckpointError`` is this class."""


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, with the offending keys."""
