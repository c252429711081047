"""The registries: methods and datasets, found by dropping a file into ``methods/`` or ``datasets/``.

``@METHODS.register_module()`` registers a Method subclass under its ``name`` attribute.
``discover()`` imports every module in ``methods/`` (so no list is edited by hand) and,
with ``plugin_dirs``, every ``*.py`` file of a folder outside the repository.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path

from mmengine.registry import Registry

from benchmark.core.cache import REPO_ROOT
from benchmark.core.errors import UserError


class _NamedRegistry(Registry):
    """A Registry whose default key is the registered object's ``name`` attribute."""

    def _register_module(self, module, module_name=None, force=False):
        if module_name is None:
            module_name = getattr(module, "name", None) or module.__name__
        super()._register_module(module, module_name, force)


METHODS = _NamedRegistry("mlrpl_method")
DATASETS = _NamedRegistry("mlrpl_dataset")


def _import_package_modules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and not info.ispkg:
            importlib.import_module(f"{package}.{info.name}")


def _import_plugin_dir(folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"--plugins folder {folder} does not exist; pass a folder holding method files")
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        mod_name = f"mlrpl_plugin_{path.stem}"
        loaded = sys.modules.get(mod_name)
        if loaded is not None:
            if Path(loaded.__file__).resolve() != path.resolve():
                raise UserError(f"plugin files {loaded.__file__} and {path} have the same name; rename one "
                                "(plugin modules are named after their file)")
            continue
        _exec_plugin(mod_name, path)


def _exec_plugin(mod_name: str, path: Path) -> None:
    """Import one plugin file; any failure is one line naming the file."""
    before = set(METHODS.module_dict)
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[mod_name]
        raise UserError(f"plugin {path} line {exc.lineno}: syntax error ({exc.msg}); fix the file") from None
    except KeyError as exc:              # mmengine's registry: a name taken by a built-in or another plugin
        del sys.modules[mod_name]
        raise UserError(f"plugin {path}: {exc.args[0] if exc.args else exc}; give its method another name") from None
    except UserError as exc:
        del sys.modules[mod_name]
        raise UserError(f"plugin {path}: {exc}") from None
    except SystemExit as exc:             # sys.exit() or exit() at import: never ends the grid silently
        del sys.modules[mod_name]
        raise UserError(f"plugin {path} called sys.exit({exc.code!r}) while being imported; a method file must "
                        "only define and register its class") from None
    except (Exception, GeneratorExit) as exc:  # noqa: BLE001 - any import-time failure of user code
        del sys.modules[mod_name]
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"plugin {path} failed to import ({type(exc).__name__}: {first}); fix the file") from None
    added = set(METHODS.module_dict) - before
    for name in sorted(added):
        problem = name_problem(name)
        if problem is not None:
            for new in added:
                METHODS.module_dict.pop(new, None)
            del sys.modules[mod_name]
            raise UserError(f"plugin {path}: method name {name!r} {problem}")
        METHODS.module_dict[name].plugin_file = str(path)


METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RESERVED_NAMES = frozenset({"all", "list", "none", "default", "baseline", "run", "report", "status", "samples",
                            "prepare", "recipes"})


def name_problem(name) -> str | None:
    """Why ``name`` cannot name a method (it appears in run ids, folder names, tables and flags), or None."""
    if not isinstance(name, str) or not METHOD_NAME.match(name) or "__" in name:
        return ("is not a safe identifier; use lower-case letters, digits and single underscores, starting with a "
                "letter, at most 40 characters (e.g. my_method)")
    if name in RESERVED_NAMES:
        return f"is reserved by the command line ({', '.join(sorted(RESERVED_NAMES))}); choose another name"
    return None


def discover(plugin_dirs: tuple[str | Path, ...] = ()) -> None:
    """Import all built-in methods and datasets, then the plugin folders."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    _import_package_modules("methods")
    _import_package_modules("datasets")
    for folder in plugin_dirs:
        _import_plugin_dir(Path(folder).expanduser().resolve())


def get_method(name: str):
    cls = METHODS.get(name) if name in METHODS.module_dict else None
    if cls is None:
        known = ", ".join(sorted(METHODS.module_dict)) or "none"
        raise UserError(f"unknown method '{name}'; registered methods: {known} (see --list)")
    return cls


def get_dataset(name: str):
    loader = DATASETS.module_dict.get(name)
    if loader is None:
        known = ", ".join(sorted(DATASETS.module_dict)) or "none"
        raise UserError(f"unknown dataset '{name}'; registered datasets: {known} (see --list)")
    return loader
