"""Saving and loading checkpoints safely.

Every file is loaded with ``torch.load(weights_only=True)``, which builds only
tensors and plain containers and refuses anything that would run code. A file
that is not one of this project's is refused with a clear message.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_lib.errors import CheckpointError
from cifar_lib.files import atomic_write

FORMAT = "cifar_lib/1"
TRAINING_STATE = "training-state"
WEIGHTS = "weights"


def save(path: str | os.PathLike, kind: str, **content) -> Path:
    """Write ``content`` (tensors, numbers, strings, lists, dicts) atomically."""
    payload = {"format": FORMAT, "kind": kind, **content}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Load a checkpoint of this project, refusing anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"'{path}' does not exist; check the path.")
    try:
        with warnings.catch_warnings():  # a file that is not a pickle says so below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # a broken file, not code it would run
            raise CheckpointError(
                f"'{path}' is not a readable PyTorch checkpoint (UnpicklingError); "
                "it may be truncated or not a checkpoint at all."
            ) from None
        raise CheckpointError(
            f"'{path}' was refused: loading it would need to run code stored in the "
            "file, which a weights-only load never does; use a checkpoint written "
            "by cifar_lib."
        ) from None
    except Exception as error:  # truncated zip, wrong format, ...
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint ({type(error).__name__}); "
            "it may be truncated or not a checkpoint at all."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not a checkpoint of this project (no '{FORMAT}' marker); "
            "use a file written by cifar_lib (a run's best_model.pt); the shipped "
            "weights in pretrained/ are named by their file's stem (--teacher best, "
            "--teacher best_alone, load_pretrained('best')) or, for the teacher, "
            "--teacher teacher_resnet."
        )
    if kind == WEIGHTS and payload.get("kind") == TRAINING_STATE:
        raise CheckpointError(
            f"'{path}' is a run's training state, kept for --resume: its raw weights "
            "are not necessarily the ones the run evaluated and saved (not the "
            "average of the weights, where the recipe keeps one); give the run's "
            "best_model.pt or final_model.pt instead."
        )
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(
            f"'{path}' holds {payload.get('kind')}, not {kind}; pick the right file."
        )
    return payload


def random_states() -> dict:
    """The state of every random-number generator training touches."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_random_states(states: dict) -> None:
    python_state = states["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load a ``best_model.pt`` / ``final_model.pt`` into ``model``; returns the
    file's metadata (recipe, epoch, accuracy)."""
    payload = load(path, kind=WEIGHTS)
    state = payload["model"] if "model" in payload else None
    if state is None:
        raise CheckpointError(f"'{path}' holds no model weights.")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise CheckpointError(
            f"the weights in '{path}' do not fit this model ({first_line}); load them "
            "into the model of the recipe they were trained with."
        ) from None
    return {key: value for key, value in payload.items() if key != "model"}
