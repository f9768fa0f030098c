"""The registry of model families: `model.type` -> its `Task` class, in one place.

    from kerastx import tasks
    task = tasks.create(cfg)          # the task of an experiment (cfg.model.type)
    tasks.get("seq2seq")              # a family's class (its facts, no TensorFlow)
    tasks.register("tagger", Tagger)  # a new family (e.g. from a test or a plugin)

The config's `model.type` accepts every registered name (`names()`), so a family
registered before an experiment is loaded is as valid as the built-in ones.
"""

from __future__ import annotations

from kerastx.tasks.base import Task
from kerastx.tasks.classifier import ClassifierTask
from kerastx.tasks.language_model import LanguageModelTask
from kerastx.tasks.seq2seq import Seq2SeqTask

_REGISTRY: dict[str, type[Task]] = {}


def register(name: str, task_class: type[Task]) -> type[Task]:
    """Registers `task_class` as `model.type: name`; returns the class.

    Raises:
        ValueError: the name is taken by another class, or the class is not a Task.
    """
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise ValueError(f"{task_class!r} is not a kerastx.tasks.Task subclass")
    known = _REGISTRY.get(name)
    if known is not None and known is not task_class:
        raise ValueError(f"model type {name!r} is already registered ({known.__qualname__})")
    task_class.name = name
    _REGISTRY[name] = task_class
    return task_class


def unregister(name: str) -> None:
    """Removes a registered family (tests that register one clean up with this)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> type[Task]:
    """The Task class of a `model.type`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model type {name!r} (registered: {', '.join(names())})"
        ) from None


def create(cfg) -> Task:
    """The task of an experiment: `get(cfg.model.type)(cfg)`."""
    return get(cfg.model.type)(cfg)


def names() -> tuple[str, ...]:
    """The registered model types, in registration order."""
    return tuple(_REGISTRY)


class Names:
    """A live view of `names()`: the `choices` of the config's `model.type`."""

    def __contains__(self, value) -> bool:
        return value in _REGISTRY

    def __iter__(self):
        return iter(names())

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return repr(names())


# The built-in families.
register("seq2seq", Seq2SeqTask)
register("decoder_lm", LanguageModelTask)
register("encoder_classifier", ClassifierTask)

__all__ = ["Names", "Task", "create", "get", "names", "register", "unregister"]
