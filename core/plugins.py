"""Discovery and registration of domain plugins.

Domains come from four places, later ones winning on a name clash: the built-in table below
(so a plain checkout works without installing), the ``coarse2fine.domains`` entry-point group
(installed packages), the environment variable ``C2F_DOMAINS`` (``name=module.path,…``, handy for
a plugin that is not installed) and ``register_domain`` calls. Built-in modules are imported only
when their domain is asked for.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
from types import SimpleNamespace

import pluggy

from core import hookspecs
from core.errors import UserError

BUILTIN_DOMAINS = {
    "digits": "domains.digits.plugin",
    "graph": "domains.graph.plugin",
    "image": "domains.image.plugin",
    "weather": "domains.weather.plugin",
}

_HOOK_NAMES = [name for name in dir(hookspecs) if name.startswith("c2f_")]
_pm: pluggy.PluginManager | None = None
_sources: dict[str, object] = {}  # domain name -> module path (str) or a plugin object


class UnknownDomainError(UserError, LookupError):
    pass


class MissingDependencyError(UserError, ImportError):
    """A domain's package is not installed; the message names the extra that installs it."""


# import name -> pip name, where they differ
PIP_NAMES = {"torch_geometric": "torch-geometric", "sklearn": "scikit-learn", "netCDF4": "netCDF4",
             "yaml": "pyyaml", "PIL": "pillow"}


def missing_dependency(name: str, error: ModuleNotFoundError) -> MissingDependencyError:
    """``error`` (a package missing while domain ``name`` ran) as one line naming the fix: the
    built-in domains' extra (``pip install -e ".[graph]"``), or the plugin's own package."""
    package = (error.name or str(error)).split(".")[0]
    pip_name = PIP_NAMES.get(package, package)
    if name in BUILTIN_DOMAINS:
        fix = (f'install the domain\'s extra: pip install -e ".[{name}]" (or pip install '
               f'"coarse2fine[{name}]"; ".[all]" installs every domain)')
    else:
        fix = f"install it (pip install {pip_name}), or reinstall the plugin package that provides '{name}'"
    return MissingDependencyError(f"domain '{name}' needs the package '{pip_name}', which is not "
                                  f"installed; {fix}")


def plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        _pm = pluggy.PluginManager(hookspecs.PROJECT)
        _pm.add_hookspecs(hookspecs)
        _sources.update(BUILTIN_DOMAINS)
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            _sources[ep.name] = ep.value
        for item in filter(None, os.environ.get("C2F_DOMAINS", "").split(",")):
            name, sep, module = item.partition("=")
            if not sep or not name.strip() or not module.strip():
                raise ValueError(f"C2F_DOMAINS entry '{item}' is not of the form name=module.path")
            _sources[name.strip()] = module.strip()
    return _pm


def register_domain(name: str, plugin) -> None:
    """Register a module or instance implementing hooks from ``core.hookspecs`` as ``name``."""
    pm = plugin_manager()
    old = pm.get_plugin(name)
    if old is not None:
        pm.unregister(old)
    _sources[name] = plugin
    pm.register(plugin, name=name)


def unregister_domain(name: str) -> None:
    pm = plugin_manager()
    old = pm.get_plugin(name)
    if old is not None:
        pm.unregister(old)
    _sources.pop(name, None)
    if name in BUILTIN_DOMAINS:
        _sources[name] = BUILTIN_DOMAINS[name]


def available_domains() -> list[str]:
    plugin_manager()
    return sorted(_sources)


def _load(name: str):
    pm = plugin_manager()
    if name not in _sources:
        raise UnknownDomainError(
            f"unknown domain '{name}'; available domains: {', '.join(available_domains())}")
    plugin = pm.get_plugin(name)
    if plugin is None:
        source = _sources[name]
        try:
            plugin = importlib.import_module(source) if isinstance(source, str) else source
        except ModuleNotFoundError as e:
            if isinstance(source, str) and e.name and source.startswith(e.name):
                raise  # the plugin module itself is missing, not one of its packages
            raise missing_dependency(name, e) from None
        pm.register(plugin, name=name)
    return plugin


def get_domain(name: str) -> SimpleNamespace:
    """The hooks of one domain: ``get_domain("graph").c2f_load_data(cfg=cfg, split="train")``.

    Every hook is callable; hooks the domain does not implement return ``None``.
    """
    plugin = _load(name)
    pm = plugin_manager()
    others = [p for n, p in pm.list_name_plugin() if p is not plugin and n in _sources]
    hooks = {h: pm.subset_hook_caller(h, remove_plugins=others) for h in _HOOK_NAMES}
    return SimpleNamespace(name=name, plugin=plugin, **hooks)


def config_dirs() -> list[str]:
    """Extra hydra config folders supplied by domains from outside this repository."""
    plugin_manager()
    dirs = []
    for name, source in list(_sources.items()):
        if source != BUILTIN_DOMAINS.get(name):  # built-ins keep their yaml in configs/domain
            result = get_domain(name).c2f_config_dir()
            if result:
                dirs.append(str(result))
    return dirs
