"""Objects from ``{"class_path", "init_args"}`` configs and back, importing only classes from allowed packages.

Nothing a user receives may run code when it is loaded. A ``class_path`` names code to import and run, so it is
accepted only from ``framer``, ``torch``, ``lightning`` and the packages in ``$FRAMER_ALLOWED_MODULES`` (comma
separated) and refused *before* its module is imported (:func:`check_allowed`); after the import the class must be a
subclass of what its place expects (:func:`resolve_class`). The other direction, :func:`to_config` and
:func:`callable_config`, records how a network, optimizer or scheduler built in Python is rebuilt.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from torch import nn

from framer.errors import UserError
from framer.io import to_plain

#: Packages whose classes configs and checkpoints may always name.
BUILTIN_ALLOWED_MODULES = ("framer", "torch", "lightning")
#: Environment variable with more allowed packages, comma separated.
ALLOWED_MODULES_ENV = "FRAMER_ALLOWED_MODULES"
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class RefusedClassPath(UserError, ValueError):
    """A config or checkpoint names a class outside the allowed packages, or of the wrong kind."""


# ---- the allow-list
def allowed_modules() -> tuple[str, ...]:
    """``framer``, ``torch``, ``lightning`` and the packages of ``$FRAMER_ALLOWED_MODULES``."""
    extra = [name.strip() for name in os.environ.get(ALLOWED_MODULES_ENV, "").split(",")]
    return BUILTIN_ALLOWED_MODULES + tuple(name for name in extra if name and name not in BUILTIN_ALLOWED_MODULES)


def check_allowed(class_path: Any, source: str, place: str = "class_path") -> str:
    """``class_path`` if it is an import path inside an allowed package, else :class:`RefusedClassPath` naming the
    ``source`` file (or object) and the ``place`` in it. Nothing is imported."""
    if not isinstance(class_path, str) or not _IMPORT_PATH.fullmatch(class_path):
        raise RefusedClassPath(f"{source}: {place} {class_path!r} is not an import path (package.module.Class)")
    if not any(f"{class_path}.".startswith(f"{root}.") for root in allowed_modules()):  # not framerx.X for framer
        raise RefusedClassPath(
            f"{source}: {place} {class_path!r} was refused and not imported: only classes from "
            f"{', '.join(allowed_modules())} may be named (trusted packages can be added to ${ALLOWED_MODULES_ENV}, "
            "comma separated)"
        )
    return class_path


def resolve_class(class_path: Any, base: type, source: str, place: str = "class_path") -> type:
    """The class ``class_path`` names: checked to lie in an allowed package before the import, then to subclass
    ``base``; :class:`RefusedClassPath` otherwise."""
    check_allowed(class_path, source, place)
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise RefusedClassPath(f"{source}: {place} {class_path!r} cannot be imported ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        expected = f"{base.__module__}.{base.__qualname__}"
        raise RefusedClassPath(f"{source}: {place} {class_path!r} is not a subclass of {expected}")
    return cls


def check_config_class_paths(data: Any, source: str, where: str = "") -> None:
    """Refuse a config (parsed YAML, checkpoint hparams) with a ``class_path`` entry, in nested dicts and lists,
    outside the allowed packages, before anything is imported."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            place = f"{where}.{key}" if where else str(key)
            if key in ("class_path", "_class_path"):
                check_allowed(value, source, place)
            else:
                check_config_class_paths(value, source, place)
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            check_config_class_paths(value, source, f"{where}[{i}]")


def restrict_config_imports() -> None:
    """Make jsonargparse refuse, before importing, any value that names something outside the allowed packages (a
    global setting). The command line's second line of defence, after :func:`check_config_class_paths`: it also
    covers values typed on the command line and configs nested in configs."""
    from jsonargparse import set_parsing_settings

    allowed = set(allowed_modules())
    withdrawn = _ALLOWED_IN_JSONARGPARSE - allowed  # allowed by an earlier call in this process, no longer
    set_parsing_settings(import_path_denylist=["*", *sorted(withdrawn)], import_path_allowlist=sorted(allowed))
    _ALLOWED_IN_JSONARGPARSE.clear()
    _ALLOWED_IN_JSONARGPARSE.update(allowed)


def follow_allowed_modules() -> None:
    """Bring jsonargparse's import policy, if :func:`restrict_config_imports` set one, up to date with the allowed
    packages (``$FRAMER_ALLOWED_MODULES`` may have changed since)."""
    if _ALLOWED_IN_JSONARGPARSE and set(allowed_modules()) != _ALLOWED_IN_JSONARGPARSE:
        restrict_config_imports()


_ALLOWED_IN_JSONARGPARSE: set[str] = set()


# ---- configs -> objects
def build(config: Mapping[str, Any], base: type = nn.Module, source: str = "config", place: str = "model") -> Any:
    """Instantiate ``{"class_path": "pkg.mod.Class", "init_args": {...}}``, a subclass of ``base`` from an allowed
    package (checked before the import; :class:`RefusedClassPath` otherwise)."""
    return factory(config, base, source, place)()


def factory(config: Mapping[str, Any], base: type, source: str = "config", place: str = "optimizer") -> Any:
    """The callable ``{"class_path", "init_args"}`` describes for an optimizer or scheduler: the class with its
    ``init_args`` bound (what LightningCLI passes for ``OptimizerCallable``)."""
    cls = resolve_class(config.get("class_path"), base, source, f"{place}.class_path")
    return functools.partial(cls, **dict(config.get("init_args") or {}))


# ---- objects -> configs
def class_path_of(obj_or_cls: Any) -> str:
    """The import path of a class (or of an object's class) in its public spelling: the shortest already imported
    parent package that exports it (``framer.CrystalFramer``, ``torch.optim.AdamW``)."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    parts = cls.__module__.split(".")
    for end in range(1, len(parts)):
        package = sys.modules.get(".".join(parts[:end]))
        if package is not None and getattr(package, cls.__qualname__, None) is cls:
            return f"{'.'.join(parts[:end])}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def to_config(model: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuilds ``model``: from an ``init_args``/``config``/``hparams`` mapping on
    it, else from attributes named like the constructor's parameters, checked by rebuilding the model (ValueError when
    they cannot be recovered: no checkpoint may silently rebuild a different network)."""
    path = class_path_of(model)
    parameters = inspect.signature(type(model).__init__).parameters.items()
    params = {name: p for name, p in parameters if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for attr in ("init_args", "config", "hparams", "_init_args"):
        stored = getattr(model, attr, None)
        if isinstance(stored, dict) and set(stored) <= set(params):
            with contextlib.suppress(TypeError):  # not plain data: recover the arguments from the attributes
                return {"class_path": path, "init_args": to_plain(dict(stored), strict=True)}
    init_args: dict[str, Any] = {}
    for name, p in params.items():
        if hasattr(model, name):
            try:
                value = to_plain(getattr(model, name), strict=True)
            except TypeError:
                value = inspect.Parameter.empty
            if value is not inspect.Parameter.empty and (p.default is p.empty or value != p.default):
                init_args[name] = value
                continue
        if p.default is p.empty:
            raise ValueError(f"cannot recover the required argument {name!r} of {path} to save it in checkpoints")
    try:
        rebuilt = type(model)(**init_args)
    except Exception as err:
        raise ValueError(f"cannot rebuild {path} from {init_args}: {err}") from err
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} != expected:
        raise ValueError(
            f"cannot recover the constructor arguments of {path} from the instance "
            "(rebuilding it gives other parameter shapes)"
        )
    return {"class_path": path, "init_args": init_args}


def callable_config(fn: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of an optimizer or scheduler callable given as a class or a
    ``functools.partial`` of a class with keyword arguments; None for anything else (e.g. a function)."""
    if isinstance(fn, functools.partial) and isinstance(fn.func, type) and not fn.args:
        try:
            return {"class_path": class_path_of(fn.func), "init_args": to_plain(dict(fn.keywords), strict=True)}
        except TypeError:
            return None
    if isinstance(fn, type):
        return {"class_path": class_path_of(fn)}
    return None
