"""Exceptions for mistakes a user can fix. The command line prints their message
as one sentence and exits with a non-zero code; anything else is a bug."""


class CifarLibError(Exception):
    """Base class: a problem in the user's input, not in cifar_lib."""


class DatasetError(CifarLibError):
    """The dataset is missing, in the wrong layout, or holds unreadable images."""


class ConfigError(CifarLibError):
    """An option is out of range or names something that does not exist."""


class CheckpointError(CifarLibError):
    """A file is not a checkpoint of this project, or is unsafe to load."""


class RunFolderError(CifarLibError):
    """The run folder exists already, or holds no run to resume."""


class TrainingDivergedError(CifarLibError):
    """The loss became NaN or infinite."""
